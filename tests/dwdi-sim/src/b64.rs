//! Standard base64 decoding (RFC 4648 §4) for HTTP Basic credentials.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

/// Decodes standard-alphabet base64; padding is optional, but when present it must be
/// complete. Anything invalid is `None`.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    let engine = if text.ends_with('=') { &STANDARD } else { &STANDARD_NO_PAD };
    engine.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ];
        for (encoded, plain) in vectors {
            assert_eq!(decode(encoded).as_deref(), Some(plain.as_bytes()), "{encoded}");
        }
        assert_eq!(decode("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        for bad in ["Z", "Zm9v!", "Zg=", "Zm9vY===", "Z=g="] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}

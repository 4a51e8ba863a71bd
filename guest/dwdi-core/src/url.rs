//! URL text: query encoding, splitting long lists into requests that stay under the
//! URL length servers accept, and cutting a URL into the parts `wasi:http` wants.
//!
//! Hand-written because the needs are tiny and a URL crate would be most of the
//! component's size.

use std::ops::Range;

use crate::model::{BackendError, invalid_request};

/// Every URL this crate builds is shorter than this many bytes; common servers and
/// proxies refuse request lines around 8 KiB.
pub const MAX_URL_BYTES: usize = 6000;

/// Appends `value` percent-encoded for a query: everything but RFC 3986 unreserved
/// characters is escaped, so `/`, `&`, `=`, `+` and spaces in paths or accounts
/// survive any decoder.
pub(crate) fn encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// Length of `value` once encoded by [`encode_into`].
fn encoded_len(value: &str) -> usize {
    value.bytes().map(|b| if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') { 1 } else { 3 }).sum()
}

/// Appends `&key=value`, the value encoded.
pub(crate) fn push_param(url: &mut String, key: &str, value: &str) {
    url.push('&');
    url.push_str(key);
    url.push('=');
    encode_into(url, value);
}

/// The URL without its query string: what error messages call the endpoint.
pub fn endpoint(url: &str) -> &str {
    url.split_once('?').map_or(url, |(before, _)| before)
}

/// The scheme of a URL this crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A URL cut the way `wasi:http` outgoing requests take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlParts<'a> {
    pub scheme: Scheme,
    /// `host[:port]`.
    pub authority: &'a str,
    /// Starts with `/`.
    pub path_with_query: &'a str,
}

/// `url` after `prefix`, compared ASCII-case-insensitively as schemes are.
pub(crate) fn strip_scheme<'a>(url: &'a str, prefix: &str) -> Option<&'a str> {
    let head = url.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) { url.get(prefix.len()..) } else { None }
}

/// Splits an absolute `http(s)://` URL; `None` for anything else. The base URL was
/// checked at settings time, so `None` here means a bug, not bad input.
pub fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = if let Some(rest) = strip_scheme(url, "https://") {
        (Scheme::Https, rest)
    } else {
        (Scheme::Http, strip_scheme(url, "http://")?)
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_with_query) = rest.split_at(cut);
    if authority.is_empty() {
        return None;
    }
    let path_with_query = if path_with_query.is_empty() { "/" } else { path_with_query };
    Some(UrlParts { scheme, authority, path_with_query })
}

/// One URL of a list query and which items it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) url: String,
    /// A range of the `items` given to [`chunk_list`].
    pub(crate) items: Range<usize>,
}

/// Builds `{head}&{key}=i1&{key}=i2…{tail}` URLs, as few as possible, each shorter
/// than [`MAX_URL_BYTES`], together carrying every item once in the given order.
/// `head` must already hold a query (`…?from=…`); `tail` is the already-encoded rest
/// (`&cluster=alps`), kept last so the fixed parameters are easy to spot in logs.
pub(crate) fn chunk_list(head: &str, key: &str, items: &[&str], tail: &str) -> Result<Vec<Chunk>, BackendError> {
    let fixed = head.len() + tail.len();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut url = String::new();
    let mut start = 0;
    for (i, item) in items.iter().enumerate() {
        let param = 2 + key.len() + encoded_len(item);
        if fixed + param >= MAX_URL_BYTES {
            return Err(invalid_request(format!(
                "resource {item:?}: a DWDI request for it alone would be {} bytes long, over \
                 the {MAX_URL_BYTES}-byte limit",
                fixed + param
            )));
        }
        if i > start && url.len() + param + tail.len() >= MAX_URL_BYTES {
            url.push_str(tail);
            chunks.push(Chunk { url: std::mem::take(&mut url), items: start..i });
            start = i;
        }
        if i == start {
            url.reserve(MAX_URL_BYTES);
            url.push_str(head);
        }
        push_param(&mut url, key, item);
    }
    if start < items.len() {
        url.push_str(tail);
        chunks.push(Chunk { url, items: start..items.len() });
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(s: &str) -> String {
        let mut out = String::new();
        encode_into(&mut out, s);
        assert_eq!(out.len(), encoded_len(s));
        out
    }

    #[test]
    fn encoding_escapes_all_but_unreserved() {
        assert_eq!(encode("abc-XYZ_0.9~"), "abc-XYZ_0.9~");
        assert_eq!(encode("/store/projects/p 1"), "%2Fstore%2Fprojects%2Fp%201");
        assert_eq!(encode("a&b=c+d?e#f%"), "a%26b%3Dc%2Bd%3Fe%23f%25");
        assert_eq!(encode("ü"), "%C3%BC");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn params_are_appended_encoded() {
        let mut url = "http://x/p?from=2024-01".to_owned();
        push_param(&mut url, "to", "2024 01");
        push_param(&mut url, "tenant", "a&b");
        assert_eq!(url, "http://x/p?from=2024-01&to=2024%2001&tenant=a%26b");
    }

    #[test]
    fn endpoint_drops_the_query() {
        assert_eq!(endpoint("http://x/a?b=c?d"), "http://x/a");
        assert_eq!(endpoint("http://x/a"), "http://x/a");
    }

    #[test]
    fn split_urls() {
        let p = split_url("https://dwdi.cscs.ch:8443/api/v1/compute?x=1").expect("splits");
        assert_eq!(p.scheme, Scheme::Https);
        assert_eq!(p.authority, "dwdi.cscs.ch:8443");
        assert_eq!(p.path_with_query, "/api/v1/compute?x=1");
        let p = split_url("HTTP://127.0.0.1:9").expect("splits");
        assert_eq!((p.scheme, p.authority, p.path_with_query), (Scheme::Http, "127.0.0.1:9", "/"));
        let p = split_url("http://h?q").expect("splits");
        assert_eq!(p.path_with_query, "?q");
        assert_eq!(split_url("ftp://x/"), None);
        assert_eq!(split_url("http:///x"), None);
        assert_eq!(split_url("http:/"), None);
    }

    #[test]
    fn few_items_make_one_url() {
        let chunks = chunk_list("http://x/a?from=1", "account", &["a b", "c"], "&cluster=z").expect("chunks");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].url, "http://x/a?from=1&account=a%20b&account=c&cluster=z");
        assert_eq!(chunks[0].items, 0..2);
        assert!(chunk_list("http://x/a?f=1", "k", &[], "").expect("chunks").is_empty());
    }

    #[test]
    fn many_items_stay_under_the_limit_and_appear_once() {
        let names: Vec<String> = (0..3000).map(|i| format!("account/{i:05}-{}", "x".repeat(i % 37))).collect();
        let items: Vec<&str> = names.iter().map(String::as_str).collect();
        let head = "https://dwdi.example/api/v1/compute/usage-month/account?from=2024-01&to=2024-01";
        let chunks = chunk_list(head, "account", &items, "&cluster=alps").expect("chunks");
        assert!(chunks.len() > 10);
        let mut next = 0;
        for chunk in &chunks {
            assert_eq!(chunk.items.start, next);
            next = chunk.items.end;
            assert!(chunk.url.len() < MAX_URL_BYTES, "{}", chunk.url.len());
            assert!(chunk.url.starts_with(head) && chunk.url.ends_with("&cluster=alps"));
            let expected: usize =
                head.len() + 13 + items[chunk.items.clone()].iter().map(|i| 9 + encoded_len(i)).sum::<usize>();
            assert_eq!(chunk.url.len(), expected);
        }
        assert_eq!(next, items.len());
        // Greedy packing: no chunk could have taken the next chunk's first item.
        for pair in chunks.windows(2) {
            let next = 9 + encoded_len(items[pair[1].items.start]);
            assert!(pair[0].url.len() + next >= MAX_URL_BYTES);
        }
    }

    #[test]
    fn an_item_too_long_for_any_url_is_an_error() {
        let long = "a".repeat(MAX_URL_BYTES);
        match chunk_list("http://x/a?f=1", "account", &["ok", &long], "") {
            Err(BackendError::InvalidRequest(m)) => assert!(m.contains("6000-byte limit"), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

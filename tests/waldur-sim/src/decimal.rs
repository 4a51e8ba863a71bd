//! DRF `DecimalField(max_digits=20, decimal_places=2)` input validation, in integer cents.
//!
//! Waldur declares every usage amount this way. DRF turns the input into a Python
//! `Decimal` (a JSON number goes through `str()` first) and counts digits on the
//! `Decimal` as written, so `"1.230"` has three decimal places and is refused even though
//! it equals `1.23`. No floating point is involved here: the digits are counted as text.

use serde_json::Value;

/// Waldur's `max_digits`.
const MAX_DIGITS: i64 = 20;
/// Waldur's `decimal_places`.
const DECIMAL_PLACES: i64 = 2;
/// DRF refuses longer strings before parsing them.
const MAX_STRING_LENGTH: usize = 1000;

/// Parses a usage amount as DRF would, returning hundredths, or the DRF error message.
/// `allow_negative` is false for Waldur's `min_value=0` fields.
pub(crate) fn parse_amount(value: &Value, allow_negative: bool) -> Result<i128, String> {
    const INVALID: &str = "A valid number is required.";
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        // Python's `str()` of an int or float; Rust's shortest round-trip rendering has
        // the same digits, which is all the precision check looks at.
        Value::Number(n) => n.to_string(),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => return Err(INVALID.into()),
        Value::Null => return Err("This field may not be null.".into()),
    };
    if text.len() > MAX_STRING_LENGTH {
        return Err("String value too large.".into());
    }
    let parsed = parse_decimal(&text).ok_or_else(|| INVALID.to_owned())?;
    check_precision(&parsed)?;
    let cents = parsed.cents();
    if cents < 0 && !allow_negative {
        return Err("Ensure this value is greater than or equal to 0.".into());
    }
    Ok(cents)
}

/// Renders hundredths the way DRF renders a 2-place `DecimalField`: `"12.30"`.
pub(crate) fn format_cents(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// A finite decimal as Python's `Decimal` holds it: sign, coefficient digits without
/// leading zeros (`"0"` for zero), and a power-of-ten exponent.
struct Parsed {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Parsed {
    /// The value in hundredths; only called once the precision check has passed, so the
    /// scale is at least -2 and the value has at most 20 digits.
    fn cents(&self) -> i128 {
        let mut value: i128 = self.digits.parse().unwrap_or(0);
        for _ in 0..(self.exponent + DECIMAL_PLACES) {
            value *= 10;
        }
        if self.negative { -value } else { value }
    }
}

/// Python `Decimal` string syntax for finite values:
/// `[+-](digits[.digits]|.digits)[(e|E)[+-]digits]`. Infinity and NaN are not numbers here.
fn parse_decimal(text: &str) -> Option<Parsed> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Absurd exponents saturate; they fail the precision check either way.
            e.parse().unwrap_or(if e.starts_with('-') { -1_000_000 } else { 1_000_000 })
        }
    };
    let all_digits = format!("{int_part}{frac_part}");
    let trimmed = all_digits.trim_start_matches('0');
    let digits = if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() };
    Some(Parsed { negative, digits, exponent: exponent.saturating_sub(frac_part.len() as i64) })
}

/// DRF's `DecimalField.validate_precision`, with its messages.
fn check_precision(parsed: &Parsed) -> Result<(), String> {
    let len = parsed.digits.len() as i64;
    let exponent = parsed.exponent;
    let (total_digits, whole_digits, decimal_places) = if exponent >= 0 {
        let total = len.saturating_add(exponent);
        (total, total, 0)
    } else if len > exponent.saturating_neg() {
        (len, len + exponent, exponent.saturating_neg())
    } else {
        (exponent.saturating_neg(), 0, exponent.saturating_neg())
    };
    if total_digits > MAX_DIGITS {
        return Err(format!("Ensure that there are no more than {MAX_DIGITS} digits in total."));
    }
    if decimal_places > DECIMAL_PLACES {
        return Err(format!("Ensure that there are no more than {DECIMAL_PLACES} decimal places."));
    }
    if whole_digits > MAX_DIGITS - DECIMAL_PLACES {
        return Err(format!(
            "Ensure that there are no more than {} digits before the decimal point.",
            MAX_DIGITS - DECIMAL_PLACES
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> String {
        format_cents(parse_amount(&v, false).expect("accepted"))
    }
    fn err(v: Value) -> String {
        parse_amount(&v, false).expect_err("refused")
    }

    #[test]
    fn accepts_what_drf_accepts() {
        assert_eq!(ok(json!("12.34")), "12.34");
        assert_eq!(ok(json!(" 12.3 ")), "12.30");
        assert_eq!(ok(json!("12")), "12.00");
        assert_eq!(ok(json!("0.00")), "0.00");
        assert_eq!(ok(json!(".5")), "0.50");
        assert_eq!(ok(json!("5.")), "5.00");
        assert_eq!(ok(json!("+1e2")), "100.00");
        assert_eq!(ok(json!("125E-2")), "1.25");
        assert_eq!(ok(json!("-0")), "0.00");
        assert_eq!(ok(json!(7)), "7.00");
        assert_eq!(ok(json!(12.34)), "12.34");
        assert_eq!(ok(json!("000012.34")), "12.34");
        assert_eq!(ok(json!("999999999999999999.99")), "999999999999999999.99");
    }

    #[test]
    fn refuses_what_drf_refuses() {
        let places = "Ensure that there are no more than 2 decimal places.";
        assert_eq!(err(json!("1.234")), places);
        assert_eq!(err(json!("1.230")), places);
        assert_eq!(err(json!("0.001")), places);
        assert_eq!(err(json!(0.1 + 0.2)), places);
        assert_eq!(err(json!("1e-3")), places);
        assert_eq!(err(json!("abc")), "A valid number is required.");
        assert_eq!(err(json!("NaN")), "A valid number is required.");
        assert_eq!(err(json!("Infinity")), "A valid number is required.");
        assert_eq!(err(json!("")), "A valid number is required.");
        assert_eq!(err(json!("1,5")), "A valid number is required.");
        assert_eq!(err(json!(true)), "A valid number is required.");
        assert_eq!(err(json!(null)), "This field may not be null.");
        assert_eq!(err(json!("-1.00")), "Ensure this value is greater than or equal to 0.");
        assert_eq!(err(json!("1e25")), "Ensure that there are no more than 20 digits in total.");
        assert_eq!(
            err(json!("1234567890123456789.0")),
            "Ensure that there are no more than 18 digits before the decimal point."
        );
        assert_eq!(err(json!("1e999999999999999999999")), "Ensure that there are no more than 20 digits in total.");
        assert_eq!(parse_amount(&json!("-1.5"), true), Ok(-150));
    }
}

//! Amounts as Waldur stores them: decimals with two places.
//!
//! Components return unrounded `f64`s; the host rounds once, here, when it shows or
//! submits a value, and compares values in whole cents so that "unchanged" is exact.

use std::fmt;

/// An amount in hundredths, the unit of Waldur's two-decimal fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cents(pub i64);

impl Cents {
    /// Rounds `value` half away from zero to two decimals; `None` if it is not finite
    /// or too large to be an amount.
    pub fn round(value: f64) -> Option<Self> {
        let scaled = (value * 100.0).round();
        (scaled.is_finite() && scaled.abs() < 9.0e15).then_some(Cents(scaled as i64))
    }

    /// Parses Waldur's decimal strings ("12.3", "12.34", "7"); more than two decimals
    /// are rounded, as Waldur would have stored them.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        if !whole.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        if frac.len() > 2 {
            return Self::round(text.parse().ok()?);
        }
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let frac: i64 = format!("{frac:0<2}").parse().ok()?;
        let cents = whole.checked_mul(100)?.checked_add(frac)?;
        Some(Cents(if negative { -cents } else { cents }))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_once_to_two_places() {
        assert_eq!(Cents::round(1500.0).map(|c| c.to_string()).as_deref(), Some("1500.00"));
        assert_eq!(Cents::round(0.125).map(|c| c.to_string()).as_deref(), Some("0.13"));
        assert_eq!(Cents::round(-2.5).map(|c| c.to_string()).as_deref(), Some("-2.50"));
        assert_eq!(Cents::round(f64::NAN), None);
        assert_eq!(Cents::round(1e300), None);
    }

    #[test]
    fn parses_waldur_decimals() {
        assert_eq!(Cents::parse("12.34"), Some(Cents(1234)));
        assert_eq!(Cents::parse("12.3"), Some(Cents(1230)));
        assert_eq!(Cents::parse("7"), Some(Cents(700)));
        assert_eq!(Cents::parse("0.005"), Some(Cents(1)));
        assert_eq!(Cents::parse("-1.00"), Some(Cents(-100)));
        for bad in ["", ".", "abc", "1.2.3", "1e3"] {
            assert_eq!(Cents::parse(bad), None, "{bad}");
        }
    }
}

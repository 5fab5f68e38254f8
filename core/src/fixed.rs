//! Exact fixed-point decimals.
//!
//! A value `v` at scale `s` is carried as the integer `raw = v · 10^s`; `-0.35` at scale 2 is
//! `-35`. Adding values of different scales first multiplies the coarser one by a power of ten;
//! multiplying adds scales (`0.35 · 1200` is `35 · 1200 = 42000` at scale 2, `420.00`), so no
//! truncation protocol is ever needed. Signed values live in F_p as their residues, and decode
//! back through the symmetric representative (see [`crate::Fp::to_i128`]).

use core::fmt;

use crate::field::Fp;

/// The largest scale (decimal digits after the point) a wire may have. `10^38` overflows `i128`,
/// and p/2 ≈ 8.5·10^37, so no useful value has more digits than this.
pub const MAX_SCALE: u8 = 36;

/// An exact decimal: `raw · 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub raw: i128,
    pub scale: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("`{0}` is not a decimal number")]
    Syntax(String),
    #[error("`{text}` has {digits} digits after the point, more than the scale {scale} allows")]
    TooPrecise { text: String, digits: u8, scale: u8 },
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// `10^e` if it fits in an `i128`.
pub fn pow10(e: u8) -> Option<i128> {
    10i128.checked_pow(e as u32)
}

impl Decimal {
    /// Parses `-12.345`, `7`, `+0.5` at its own scale (the number of digits after the point).
    pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
        let syntax = || DecimalError::Syntax(text.to_string());
        let (negative, body) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) || body.ends_with('.') {
            return Err(syntax());
        }
        let scale = u8::try_from(frac.len())
            .ok()
            .filter(|&s| s <= MAX_SCALE)
            .ok_or_else(|| DecimalError::TooLarge(text.to_string()))?;
        let mut raw: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            raw = raw
                .checked_mul(10)
                .and_then(|r| r.checked_add((b - b'0') as i128))
                .ok_or_else(|| DecimalError::TooLarge(text.to_string()))?;
        }
        Ok(Decimal {
            raw: if negative { -raw } else { raw },
            scale,
        })
    }

    /// Parses `text` and expresses it at exactly `scale`: `1200.5` at scale 2 is raw `120050`.
    /// More digits than the scale allows is an error, never a silent rounding.
    pub fn parse_at(text: &str, scale: u8) -> Result<Decimal, DecimalError> {
        let d = Decimal::parse(text)?;
        if d.scale > scale {
            return Err(DecimalError::TooPrecise {
                text: text.to_string(),
                digits: d.scale,
                scale,
            });
        }
        d.rescale(scale)
            .ok_or_else(|| DecimalError::TooLarge(text.to_string()))
    }

    /// The same value at a finer (or equal) scale, if it fits.
    pub fn rescale(self, scale: u8) -> Option<Decimal> {
        let factor = pow10(scale.checked_sub(self.scale)?)?;
        Some(Decimal {
            raw: self.raw.checked_mul(factor)?,
            scale,
        })
    }

    /// Decodes a field element carrying a value at `scale`.
    pub fn from_field(x: Fp, scale: u8) -> Decimal {
        Decimal {
            raw: x.to_i128(),
            scale,
        }
    }

    pub fn to_field(self) -> Fp {
        Fp::from_i128(self.raw)
    }
}

impl fmt::Display for Decimal {
    /// Prints every digit of the scale: `420.00`, `-7`, `-0.05`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.raw < 0 { "-" } else { "" };
        let digits = self.raw.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_print() {
        let cases = [
            ("-0.35", -35, 2, "-0.35"),
            ("7", 7, 0, "7"),
            ("+1200.50", 120050, 2, "1200.50"),
            ("0.05", 5, 2, "0.05"),
            ("-0.005", -5, 3, "-0.005"),
        ];
        for (text, raw, scale, shown) in cases {
            let d = Decimal::parse(text).unwrap();
            assert_eq!((d.raw, d.scale), (raw, scale), "{text}");
            assert_eq!(d.to_string(), shown);
        }
    }

    #[test]
    fn parse_at_scale() {
        assert_eq!(Decimal::parse_at("1200.5", 2).unwrap().raw, 120050);
        assert!(matches!(
            Decimal::parse_at("1.234", 2),
            Err(DecimalError::TooPrecise { .. })
        ));
        for bad in ["", "-", "1.", ".5", "1e3", "12a", "--1", "1.2.3"] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
        assert!(Decimal::parse(&"9".repeat(60)).is_err());
    }

    #[test]
    fn field_round_trip_of_negatives() {
        let d = Decimal::parse("-7").unwrap();
        assert_eq!(Decimal::from_field(d.to_field(), 0).to_string(), "-7");
        let product = Decimal::parse("0.35").unwrap().to_field() * Fp::from(1200);
        assert_eq!(Decimal::from_field(product, 2).to_string(), "420.00");
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(raw in -(10i128.pow(30))..10i128.pow(30), scale in 0u8..8) {
            let d = Decimal { raw, scale };
            prop_assert_eq!(Decimal::parse_at(&d.to_string(), scale).unwrap(), d);
        }
    }
}

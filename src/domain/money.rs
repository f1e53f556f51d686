//! Exact money: ISO 4217 currencies and integer minor units.
//!
//! An amount is an `i64` count of the currency's minor unit (cents for USD, yen for JPY,
//! fils for KWD), using the ISO 4217 exponent. Decimal strings are parsed exactly; an amount
//! with more decimals than its currency has is refused rather than silently rounded. The only
//! rounding in postgate happens where a rate or a percentage is applied, half to even, in
//! [`Money::convert`] and [`Money::percent`].

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// An ISO 4217 currency with a defined minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

/// Why a string is not a currency we can account in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an ISO 4217 currency with minor units")]
pub struct UnknownCurrency(pub String);

impl Currency {
    /// Parses a three-letter code, case-insensitively. Codes without an exponent
    /// (precious metals, XXX) are refused: they cannot be counted in minor units.
    pub fn parse(code: &str) -> Result<Self, UnknownCurrency> {
        let upper = code.trim().to_ascii_uppercase();
        iso_currency::Currency::from_code(&upper)
            .filter(|c| c.exponent().is_some())
            .map(Currency)
            .ok_or_else(|| UnknownCurrency(code.to_owned()))
    }

    pub fn code(self) -> &'static str {
        // iso_currency returns an owned-by-enum &str for every variant.
        self.0.code()
    }

    /// Number of decimal places of the minor unit (USD 2, JPY 0, KWD 3).
    pub fn exponent(self) -> u32 {
        self.0.exponent().map(u32::from).unwrap_or(0)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = UnknownCurrency;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An exact amount of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

/// The largest amount postgate takes, in minor units: 10 000 000 000 000 (100 billion USD,
/// 10 trillion JPY). Far beyond any real conversion, and small enough that sums of amounts
/// stay exact in 64-bit integers for hundreds of thousands of maximal ones.
pub const MAX_MINOR: i64 = 10_000_000_000_000;

/// Why an amount could not be represented exactly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("{0:?} is not a decimal number")]
    NotDecimal(String),
    #[error("{amount} has more decimal places than {currency} allows ({exponent})")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u32,
    },
    #[error("amount {0} is negative")]
    Negative(String),
    #[error("amount {0} is too large (at most {MAX_MINOR} minor units)")]
    Overflow(String),
}

/// Parses a plain decimal number: digits, one optional point, an optional leading sign.
/// `Decimal::from_str` would also take forms no partner means ("1e3"), so they are refused.
pub fn parse_decimal(text: &str) -> Result<Decimal, AmountError> {
    let trimmed = text.trim();
    let plain = !trimmed.is_empty()
        && trimmed.bytes().filter(|b| *b == b'.').count() <= 1
        && trimmed.bytes().any(|b| b.is_ascii_digit())
        && trimmed
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && (b == b'-' || b == b'+')));
    if !plain {
        return Err(AmountError::NotDecimal(text.to_owned()));
    }
    Decimal::from_str(trimmed).map_err(|_| AmountError::NotDecimal(text.to_owned()))
}

impl Money {
    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn from_minor(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Parses a non-negative decimal string ("12.5", "1000", "0.125") exactly.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, AmountError> {
        Self::from_decimal(parse_decimal(text)?, currency)
    }

    /// Converts an exact decimal to minor units, refusing excess precision.
    pub fn from_decimal(value: Decimal, currency: Currency) -> Result<Self, AmountError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(AmountError::Negative(value.to_string()));
        }
        let exponent = currency.exponent();
        let scaled = value
            .checked_mul(Decimal::from(10i64.pow(exponent)))
            .ok_or_else(|| AmountError::Overflow(value.to_string()))?;
        if scaled.fract() != Decimal::ZERO {
            return Err(AmountError::TooPrecise {
                amount: value.normalize().to_string(),
                currency,
                exponent,
            });
        }
        let minor = within_limit(scaled, value)?;
        Ok(Self { minor, currency })
    }

    /// The amount as an exact decimal in major units.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.minor, self.currency.exponent())
    }

    /// Converts at `rate` (units of `target` per unit of `self.currency`), half to even.
    pub fn convert(self, target: Currency, rate: Decimal) -> Result<Self, AmountError> {
        let value = self
            .to_decimal()
            .checked_mul(rate)
            .ok_or_else(|| AmountError::Overflow(self.to_string()))?;
        Self::rounded(value, target)
    }

    /// `percent` % of this amount, half to even in the same currency.
    pub fn percent(self, percent: Decimal) -> Result<Self, AmountError> {
        let value = self
            .to_decimal()
            .checked_mul(percent)
            .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED))
            .ok_or_else(|| AmountError::Overflow(self.to_string()))?;
        Self::rounded(value, self.currency)
    }

    fn rounded(value: Decimal, currency: Currency) -> Result<Self, AmountError> {
        let rounded = value
            .round_dp_with_strategy(currency.exponent(), RoundingStrategy::MidpointNearestEven);
        let scaled = rounded
            .checked_mul(Decimal::from(10i64.pow(currency.exponent())))
            .ok_or_else(|| AmountError::Overflow(value.to_string()))?;
        let minor = within_limit(scaled, value)?;
        Ok(Self { minor, currency })
    }
}

/// `scaled` (minor units) as an integer, if it is at most [`MAX_MINOR`] either way; `value`
/// names the amount in the error.
fn within_limit(scaled: Decimal, value: Decimal) -> Result<i64, AmountError> {
    i64::try_from(scaled)
        .ok()
        .filter(|minor| minor.unsigned_abs() <= MAX_MINOR.unsigned_abs())
        .ok_or_else(|| AmountError::Overflow(value.to_string()))
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).expect("currency")
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(cur("USD").exponent(), 2);
        assert_eq!(cur("jpy").exponent(), 0);
        assert_eq!(cur("KWD").exponent(), 3);
        assert!(Currency::parse("XAU").is_err());
        assert!(Currency::parse("ABC").is_err());
        assert!(Currency::parse("").is_err());
    }

    #[test]
    fn decimal_strings_parse_exactly_into_minor_units() {
        assert_eq!(Money::parse("12.34", cur("USD")).map(|m| m.minor), Ok(1234));
        assert_eq!(Money::parse("12.3", cur("USD")).map(|m| m.minor), Ok(1230));
        assert_eq!(Money::parse("1500", cur("JPY")).map(|m| m.minor), Ok(1500));
        assert_eq!(Money::parse("1.234", cur("KWD")).map(|m| m.minor), Ok(1234));
        assert_eq!(
            Money::parse("0.1", cur("USD")).map(|m| m.minor * 3),
            Ok(30),
            "no binary floating point"
        );
    }

    #[test]
    fn excess_precision_and_garbage_are_refused() {
        assert!(matches!(
            Money::parse("12.345", cur("USD")),
            Err(AmountError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse("1.5", cur("JPY")),
            Err(AmountError::TooPrecise { .. })
        ));
        for bad in ["", "abc", "1e3", "1.2.3", "NaN", "--1", "1,5"] {
            assert!(Money::parse(bad, cur("USD")).is_err(), "{bad}");
        }
        assert!(matches!(
            Money::parse("-1", cur("USD")),
            Err(AmountError::Negative(_))
        ));
        assert!(Money::parse("99999999999999999999", cur("USD")).is_err());
    }

    #[test]
    fn amounts_past_the_limit_are_refused_in_every_currency_and_conversion() {
        assert_eq!(
            Money::parse("100000000000.00", cur("USD")).map(|m| m.minor),
            Ok(MAX_MINOR)
        );
        assert!(matches!(
            Money::parse("100000000000.01", cur("USD")),
            Err(AmountError::Overflow(_))
        ));
        assert!(matches!(
            Money::parse("10000000000001", cur("JPY")),
            Err(AmountError::Overflow(_))
        ));
        assert!(matches!(
            Money::parse("92233720368547758.07", cur("USD")),
            Err(AmountError::Overflow(_))
        ));
        // Within the limit in USD, past it once converted to yen.
        let usd = Money::parse("100000000000", cur("USD")).expect("usd");
        assert!(matches!(
            usd.convert(cur("JPY"), Decimal::from(150)),
            Err(AmountError::Overflow(_))
        ));
    }

    #[test]
    fn conversion_rounds_half_to_even_into_the_target_exponent() {
        // 1234 JPY at 0.0067 USD/JPY = 8.2678 USD -> 8.27
        let jpy = Money::parse("1234", cur("JPY")).expect("jpy");
        assert_eq!(
            jpy.convert(cur("USD"), Decimal::from_str("0.0067").expect("rate")),
            Ok(Money::from_minor(827, cur("USD")))
        );
        // 1.005 KWD at 3.25 = 3.26625 USD -> 3.27
        let kwd = Money::parse("1.005", cur("KWD")).expect("kwd");
        assert_eq!(
            kwd.convert(cur("USD"), Decimal::from_str("3.25").expect("rate"))
                .map(|m| m.minor),
            Ok(327)
        );
        // Half to even: 0.125 -> 0.12, 0.135 -> 0.14
        let usd = Money::from_minor(25, cur("USD"));
        assert_eq!(usd.percent(Decimal::from(50)).map(|m| m.minor), Ok(12));
        assert_eq!(
            Money::from_minor(27, cur("USD"))
                .percent(Decimal::from(50))
                .map(|m| m.minor),
            Ok(14)
        );
    }
}

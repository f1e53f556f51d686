//! The closed set of value transforms, compiled at load (regexes built once, bounded size).
//! Input and output are text: JSON scalars are rendered exactly (no f64), so amounts and
//! big ids survive every step. `Ok(None)` means "absent" (regex without match, missing
//! query parameter), which lets `first_of` fall through to the next candidate.

use std::collections::BTreeMap;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};
use rust_decimal::Decimal;

use super::spec::TransformFile;

#[derive(Debug, Clone)]
pub(crate) enum Transform {
    Trim,
    Lowercase,
    Uppercase,
    Decimal,
    MinorUnits,
    QueryParam(Vec<String>),
    Regex(Regex),
    Lookup(BTreeMap<String, String>),
}

/// Values a transform may need from the rest of the mapping.
pub(crate) struct Ctx<'a> {
    pub currency: Option<&'a str>,
}

impl Transform {
    pub(crate) fn compile(t: &TransformFile) -> Result<Transform, String> {
        Ok(match t {
            TransformFile::Trim => Transform::Trim,
            TransformFile::Lowercase => Transform::Lowercase,
            TransformFile::Uppercase => Transform::Uppercase,
            TransformFile::Decimal => Transform::Decimal,
            TransformFile::MinorUnits => Transform::MinorUnits,
            TransformFile::QueryParam(names) => {
                let names = names.clone().into_vec();
                if names.is_empty() {
                    return Err("query_param needs at least one parameter name".into());
                }
                Transform::QueryParam(names)
            }
            TransformFile::Regex(r) => Transform::Regex(
                RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid regex: {e}"))?,
            ),
            TransformFile::Lookup(table) => {
                if table.is_empty() {
                    return Err("lookup table is empty".into());
                }
                Transform::Lookup(table.clone())
            }
        })
    }

    pub(crate) fn apply(&self, v: String, ctx: &Ctx<'_>) -> Result<Option<String>, String> {
        Ok(match self {
            Transform::Trim => Some(v.trim().to_string()),
            Transform::Lowercase => Some(v.to_lowercase()),
            Transform::Uppercase => Some(v.to_uppercase()),
            Transform::Decimal => Some(parse_decimal(&v)?.normalize().to_string()),
            Transform::MinorUnits => {
                let cur = ctx
                    .currency
                    .ok_or("minor_units needs the currency field to be mapped")?;
                let minor: i64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{v}` is not an integer amount in minor units"))?;
                Some(Decimal::new(minor, minor_unit_exponent(cur)).to_string())
            }
            Transform::QueryParam(names) => query_param(&v, names),
            Transform::Regex(re) => re.captures(&v).and_then(|c| {
                let m = if c.len() > 1 { c.get(1) } else { c.get(0) };
                m.map(|m| m.as_str().to_string())
            }),
            Transform::Lookup(table) => match table.get(&v).or_else(|| table.get("*")) {
                Some(out) => Some(out.clone()),
                None => {
                    let known: Vec<&str> = table.keys().map(String::as_str).collect();
                    return Err(format!(
                        "`{v}` is not in the lookup table (known: {})",
                        known.join(", ")
                    ));
                }
            },
        })
    }
}

/// Exact decimal from text: plain (`414.95`) or scientific (`1.5e2`), never via f64.
pub(crate) fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    Decimal::from_str(t)
        .or_else(|_| Decimal::from_scientific(t))
        .map_err(|_| format!("`{s}` is not a decimal number"))
}

fn query_param(v: &str, names: &[String]) -> Option<String> {
    // Accept a full URL, a path with a query ("/shop?subid=1", Shopify landing_site) or a
    // bare query string.
    let query = match v.split_once('?') {
        Some((_, q)) => q,
        None if v.contains('=') => v,
        None => return None,
    };
    let query = query.split('#').next().unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    names.iter().find_map(|n| {
        pairs
            .iter()
            .find(|(k, val)| k == n && !val.is_empty())
            .map(|(_, val)| val.clone())
    })
}

/// ISO 4217 minor-unit exponent; 2 unless listed (ISO 4217 list one, 2024).
pub fn minor_unit_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: TransformFile, v: &str, currency: Option<&str>) -> Result<Option<String>, String> {
        Transform::compile(&t)?.apply(v.to_string(), &Ctx { currency })
    }

    #[test]
    fn lowercase_and_trim_change_only_case_and_surrounding_space() {
        assert_eq!(
            run(TransformFile::Lowercase, " Closed WON ", None),
            Ok(Some(" closed won ".into()))
        );
        assert_eq!(
            run(TransformFile::Trim, " \tClosed WON\n", None),
            Ok(Some("Closed WON".into()))
        );
    }

    #[test]
    fn minor_units_use_the_currency_exponent() {
        assert_eq!(
            run(TransformFile::MinorUnits, "1999", Some("USD")),
            Ok(Some("19.99".into()))
        );
        assert_eq!(
            run(TransformFile::MinorUnits, "1999", Some("JPY")),
            Ok(Some("1999".into()))
        );
        assert_eq!(
            run(TransformFile::MinorUnits, "1999", Some("KWD")),
            Ok(Some("1.999".into()))
        );
        assert!(run(TransformFile::MinorUnits, "19.99", Some("USD")).is_err());
        assert!(run(TransformFile::MinorUnits, "1999", None).is_err());
    }

    #[test]
    fn query_param_reads_urls_paths_and_bare_queries() {
        let t = || {
            TransformFile::QueryParam(super::super::spec::OneOrMany::Many(vec![
                "subid".into(),
                "click_id".into(),
            ]))
        };
        assert_eq!(
            run(t(), "https://shop.example/?utm=x&click_id=abc#frag", None),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            run(t(), "/products/x?subid=s%201", None),
            Ok(Some("s 1".into()))
        );
        assert_eq!(run(t(), "subid=q", None), Ok(Some("q".into())));
        assert_eq!(run(t(), "/no-query", None), Ok(None));
    }

    #[test]
    fn regex_takes_the_first_group_and_a_miss_is_absent() {
        assert_eq!(
            run(TransformFile::Regex("id-(\\d+)".into()), "x id-42 y", None),
            Ok(Some("42".into()))
        );
        assert_eq!(
            run(TransformFile::Regex("id-\\d+".into()), "id-42", None),
            Ok(Some("id-42".into()))
        );
        assert_eq!(
            run(TransformFile::Regex("z(\\d)".into()), "abc", None),
            Ok(None)
        );
        assert!(run(TransformFile::Regex("(".into()), "abc", None).is_err());
    }

    #[test]
    fn lookup_misses_are_errors_unless_a_star_fallback_exists() {
        let table: BTreeMap<String, String> =
            [("closedwon".to_string(), "approved".to_string())].into();
        assert_eq!(
            run(TransformFile::Lookup(table.clone()), "closedwon", None),
            Ok(Some("approved".into()))
        );
        let err = run(TransformFile::Lookup(table.clone()), "open", None)
            .err()
            .unwrap_or_default();
        assert!(err.contains("closedwon"), "{err}");
        let mut with_star = table;
        with_star.insert("*".into(), "pending".into());
        assert_eq!(
            run(TransformFile::Lookup(with_star), "open", None),
            Ok(Some("pending".into()))
        );
    }

    #[test]
    fn decimals_are_exact_and_scientific_notation_is_accepted() {
        assert_eq!(
            run(TransformFile::Decimal, "414.950", None),
            Ok(Some("414.95".into()))
        );
        assert_eq!(
            run(TransformFile::Decimal, "1.5e2", None),
            Ok(Some("150".into()))
        );
        assert_eq!(
            run(TransformFile::Decimal, "0.1", None),
            Ok(Some("0.1".into()))
        );
        assert!(run(TransformFile::Decimal, "ten", None).is_err());
    }
}

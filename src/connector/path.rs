//! JSONPath (RFC 9535, jsonpath-rust 1.0) compiled once at load, behind limits.
//!
//! Input: an operator-written query string. Output: a [`CompiledPath`] that can be evaluated
//! any number of times on a `&serde_json::Value` without re-parsing. Errors: a reason string
//! the caller turns into `file:line: reason`. The limits are checked on the raw string
//! *before* jsonpath-rust sees it: its parser is recursive, and RFC 9535 §4 asks
//! implementations to guard against hostile queries.

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

/// Longest query accepted, in bytes.
pub const MAX_QUERY_LEN: usize = 512;
/// Deepest nesting of `(` and `[` accepted (real mappings use 2–3).
pub const MAX_NESTING: usize = 16;

/// A parsed JSONPath plus its source text (for error messages).
#[derive(Debug, Clone)]
pub struct CompiledPath {
    text: String,
    query: JpQuery,
}

/// One node selected by a query, with its normalized path (e.g. `$['a'][0]`).
#[derive(Debug)]
pub struct Hit<'a> {
    pub value: &'a Value,
    pub location: String,
}

impl CompiledPath {
    /// Checks the limits, then parses. The error is a human-readable reason.
    pub fn compile(text: &str) -> Result<CompiledPath, String> {
        check_limits(text)?;
        let query = jsonpath_rust::parser::parse_json_path(text)
            .map_err(|e| format!("invalid JSONPath `{text}`: {e}"))?;
        Ok(CompiledPath {
            text: text.to_string(),
            query,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// All nodes the query selects, in document order. Evaluation errors (which RFC 9535
    /// queries on plain JSON do not produce) are treated as "nothing selected".
    pub fn select<'a>(&self, value: &'a Value) -> Vec<Hit<'a>> {
        match jsonpath_rust::query::js_path_process(&self.query, value) {
            Ok(refs) => refs
                .into_iter()
                .map(|r| Hit {
                    value: r.val,
                    location: r.path,
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// First selected node that is not JSON `null`.
    pub fn first<'a>(&self, value: &'a Value) -> Option<Hit<'a>> {
        self.select(value).into_iter().find(|h| !h.value.is_null())
    }
}

/// Rejects over-long or over-nested queries without recursion.
fn check_limits(text: &str) -> Result<(), String> {
    if text.len() > MAX_QUERY_LEN {
        return Err(format!(
            "JSONPath is {} bytes long; the limit is {MAX_QUERY_LEN}",
            text.len()
        ));
    }
    if !text.starts_with('$') {
        return Err(format!("JSONPath `{text}` must start with `$`"));
    }
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(q) = quote {
            // Brackets inside string literals are data, not nesting.
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "JSONPath nests brackets/parentheses deeper than {MAX_NESTING}"
                    ));
                }
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// JSON type name for operator messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A scalar rendered as text exactly as received: numbers keep their digits (the crate enables
/// serde_json's `arbitrary_precision`, so 820982911946154508 stays exact). `None` for
/// null, arrays and objects.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_with_2000_nested_parentheses_is_refused_before_parsing() {
        let q = format!("$[?{}@.a{}]", "(".repeat(2000), ")".repeat(2000));
        let err = CompiledPath::compile(&q).err().unwrap_or_default();
        assert!(err.contains("limit") || err.contains("deeper"), "{err}");
        let deep = format!("$[?{}@.a{}]", "(".repeat(200), ")".repeat(200));
        let err = CompiledPath::compile(&deep).err().unwrap_or_default();
        assert!(err.contains("deeper"), "{err}");
    }

    #[test]
    fn brackets_inside_string_literals_do_not_count_as_nesting() {
        let q = format!("$['{}']", "[".repeat(40));
        assert!(CompiledPath::compile(&q).is_ok());
    }

    #[test]
    fn a_compiled_path_is_reused_and_keeps_big_integers_exact() {
        let p = CompiledPath::compile("$.id").unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_str(r#"{"id": 820982911946154508}"#).unwrap_or_default();
        for _ in 0..3 {
            let hit = p.first(&v).map(|h| scalar_text(h.value));
            assert_eq!(hit, Some(Some("820982911946154508".to_string())));
        }
    }

    #[test]
    fn numeric_filters_work_with_exact_numbers() {
        // serde_json's arbitrary_precision changes Number's internals; filters must still compare.
        let v: Value = serde_json::from_str(r#"[{"n": 1, "id": "a"}, {"n": 2.50, "id": "b"}, {"n": 820982911946154508, "id": "c"}]"#)
            .unwrap_or_default();
        let ids = |q: &str| -> Vec<String> {
            CompiledPath::compile(q)
                .map(|p| {
                    p.select(&v)
                        .iter()
                        .filter_map(|h| scalar_text(h.value))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(ids("$[?@.n == 1].id"), vec!["a"]);
        assert_eq!(ids("$[?@.n > 2].id"), vec!["b", "c"]);
        assert_eq!(ids("$[?@.n == 2.5].id"), vec!["b"]);
    }

    #[test]
    fn syntax_errors_name_the_query() {
        let err = CompiledPath::compile("$[?@.a ==]")
            .err()
            .unwrap_or_default();
        assert!(err.contains("$[?@.a ==]"), "{err}");
    }
}

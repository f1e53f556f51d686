//! Pruned JSON parsing: build only the parts of a body that some JSONPath can reach.
//!
//! Input: the JSONPath texts a connector will ever evaluate on its bodies (its auth, event
//! locators and split, and every mapping of the connector). Output: a [`Prune`] whose
//! [`Prune::parse`] returns a `Value` holding every subtree those paths can select, and
//! nothing else. Building and dropping a full `Value` was about a third of the server's CPU
//! on 15 KB Shopify orders (docs/PERFORMANCE.md); skipped members are only scanned
//! (`IgnoredAny` allocates nothing) and kept ones built in the same pass, and syntax errors anywhere are still errors.
//!
//! Only a leading chain of member names (`$.a.b`, `$['a']`) narrows the tree; at the first
//! other segment (wildcard, index, slice, filter, descendant) the whole subtree from there
//! is kept, and a query that mentions `$` inside (a filter comparing with the root) keeps
//! the whole document. So every query selects the same nodes on the pruned value as on the
//! full one; `postgate check` compares both on every mapping test case.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Which parts of a body to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// Build the whole subtree.
    All,
    /// An object of which only these members can be reached (anything else here: whole).
    Members(BTreeMap<String, Node>),
}

impl Prune {
    /// Keeps exactly what `paths` can reach; with no paths, nothing below the root.
    pub fn for_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Prune {
        let mut prune = Prune {
            root: Node::Members(BTreeMap::new()),
        };
        prune.extend(paths);
        prune
    }

    /// Also keeps what `paths` can reach.
    pub fn extend<'a>(&mut self, paths: impl IntoIterator<Item = &'a str>) {
        for path in paths {
            self.root.insert(&member_chain(path));
        }
    }

    /// True if every body is parsed whole anyway.
    pub fn keeps_everything(&self) -> bool {
        self.root == Node::All
    }

    /// Parses `body` (one JSON document), building only the kept subtrees.
    pub fn parse(&self, body: &[u8]) -> Result<Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let value = self.root.build(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

impl Node {
    fn insert(&mut self, chain: &[String]) {
        let Node::Members(members) = self else {
            return;
        };
        match chain.split_first() {
            None => *self = Node::All,
            Some((first, rest)) => members
                .entry(first.clone())
                .or_insert_with(|| Node::Members(BTreeMap::new()))
                .insert(rest),
        }
    }

    fn build<'de, D: Deserializer<'de>>(&self, de: D) -> Result<Value, D::Error> {
        match self {
            Node::All => Value::deserialize(de),
            Node::Members(members) => de.deserialize_any(Pruned(members)),
        }
    }
}

/// A member's value is built in the same pass, by its own node.
impl<'de> DeserializeSeed<'de> for &Node {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        self.build(de)
    }
}

/// Builds one value under a `Members` node.
struct Pruned<'t>(&'t BTreeMap<String, Node>);

/// An object key, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut first = true;
        while let Some(Key(key)) = map.next_key()? {
            if std::mem::take(&mut first) && key == NUMBER_TOKEN {
                // serde_json's arbitrary-precision number, presented as a one-entry map.
                let text: Cow<'de, str> = map.next_value()?;
                return text
                    .parse::<serde_json::Number>()
                    .map(Value::Number)
                    .map_err(serde::de::Error::custom);
            }
            match self.0.get(key.as_ref()) {
                Some(node) => {
                    let value = map.next_value_seed(node)?;
                    out.insert(key.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Not an object where a member chain continues: no member-name segment selects
    // anything in it, but the value is kept whole so nothing depends on that argument.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
}

/// The key serde_json (with `arbitrary_precision`) uses to pass a number through `visit_map`.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The leading member names of `path` (RFC 9535 shorthand `.name` or `['name']`), up to the
/// first segment of any other kind. A path that refers to the root again inside a filter
/// needs the whole document: no chain.
pub(crate) fn member_chain(path: &str) -> Vec<String> {
    let Some(mut rest) = path.trim().strip_prefix('$') else {
        return Vec::new();
    };
    if rest.contains('$') {
        return Vec::new();
    }
    let mut chain = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('.').filter(|a| !a.starts_with('.')) {
            // RFC 9535 shorthand names: ALPHA, DIGIT, `_` and any non-ASCII character.
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii()))
                .unwrap_or(after.len());
            // A name must end the path or be followed by another segment; anything else is
            // syntax this scan does not know, so the subtree is kept whole from here.
            // jsonpath-rust trims names with Unicode's notion of whitespace (`$.a\u{a0}.b`
            // looks up `a`), so a name holding any is not followed.
            let name = &after[..len];
            if len == 0
                || name.contains(char::is_whitespace)
                || !matches!(after[len..].chars().next(), None | Some('.' | '['))
            {
                break;
            }
            chain.push(name.to_owned());
            rest = &after[len..];
        } else if let Some((name, after)) = quoted_member(rest) {
            chain.push(name.to_owned());
            rest = after;
        } else {
            break;
        }
    }
    chain
}

/// `['name']` or `["name"]` without escapes or lists.
fn quoted_member(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('[')?.trim_start();
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(quote)?;
    let name = &body[..end];
    if name.contains('\\') {
        return None;
    }
    let after = body[end + 1..].trim_start().strip_prefix(']')?;
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::path::CompiledPath;

    #[test]
    fn member_chains_stop_at_the_first_segment_that_is_not_a_name() {
        let cases: &[(&str, &[&str])] = &[
            ("$", &[]),
            ("$.id", &["id"]),
            (
                "$.total_price_set.shop_money.amount",
                &["total_price_set", "shop_money", "amount"],
            ),
            ("$['event_data']['revenue']", &["event_data", "revenue"]),
            ("$[\"a b\"].c", &["a b", "c"]),
            (
                "$.note_attributes[?(@.name == 'click_id')].value",
                &["note_attributes"],
            ),
            ("$.refunds[*].id", &["refunds"]),
            ("$.items[0].sku", &["items"]),
            ("$..id", &[]),
            ("$.a..id", &["a"]),
            ("$.*", &[]),
            ("$['a','b']", &[]),
            ("$['a\\'b'].c", &[]),
            ("$.items[?@.price > $.min]", &[]),
            // Non-ASCII names are whole names, not cut at the first such character.
            ("$.café", &["café"]),
            ("$.données.montant", &["données", "montant"]),
            ("$.a.b-c", &["a"]),
            ("$.a.b c", &["a"]),
            ("$.a\u{a0}.b", &[]),
            ("$.x.a\u{3000}", &["x", "a"]),
        ];
        for (path, want) in cases {
            assert_eq!(member_chain(path), *want, "{path}");
        }
    }

    const ORDER: &str = r#"{
        "id": 820982911946154508, "email": "jon@example.com",
        "total_price_set": {"shop_money": {"amount": "199.65", "currency_code": "USD"},
                            "presentment_money": {"amount": "199.65", "currency_code": "EUR"}},
        "note_attributes": [{"name": "click_id", "value": "abc"}, {"name": "x", "value": 1.50}],
        "line_items": [{"id": 1, "price": "10.00", "title": "a \"quoted\" \u00e9 title"}],
        "esc\u0061ped": {"k": 12345678901234567890123},
        "big": 1e400, "n": null, "t": true,
        "café": {"crème": "brûlée", "x": 1}, "a": {"b": "nbsp"}
    }"#;

    fn full() -> Value {
        serde_json::from_str(ORDER).expect("valid")
    }

    #[test]
    fn queries_select_the_same_nodes_on_the_pruned_value() {
        let queries = [
            "$.id",
            "$.total_price_set.shop_money.amount",
            "$.total_price_set.shop_money",
            "$.note_attributes[?(@.name == 'click_id')].value",
            "$.note_attributes[*].value",
            "$.escaped.k",
            "$.big",
            "$.n",
            "$.missing.deeper",
            "$.email.not_an_object",
            "$.café.crème",
        ];
        let prune = Prune::for_paths(queries);
        let pruned = prune.parse(ORDER.as_bytes()).expect("parses");
        let whole = full();
        for q in queries {
            let path = CompiledPath::compile(q).expect("query");
            let a: Vec<&Value> = path.select(&pruned).into_iter().map(|h| h.value).collect();
            let b: Vec<&Value> = path.select(&whole).into_iter().map(|h| h.value).collect();
            assert_eq!(a, b, "{q}");
        }
        // Numbers keep their exact text.
        assert_eq!(pruned["id"].to_string(), "820982911946154508");
        assert_eq!(
            pruned["escaped"]["k"].to_string(),
            "12345678901234567890123"
        );
        assert_eq!(pruned["note_attributes"][1]["value"].to_string(), "1.50");
        // And what no query reaches is not built.
        assert!(pruned.get("line_items").is_none(), "{pruned}");
        assert!(pruned["total_price_set"].get("presentment_money").is_none());
    }

    #[test]
    fn a_query_that_needs_the_whole_document_keeps_it() {
        for q in ["$", "$..amount", "$.*", "$[?@.id == $.id]", "$.a\u{a0}.b"] {
            let prune = Prune::for_paths([q, "$.id"]);
            assert!(prune.keeps_everything(), "{q}");
            assert_eq!(
                prune.parse(ORDER.as_bytes()).expect("parses"),
                full(),
                "{q}"
            );
        }
    }

    #[test]
    fn bodies_that_are_not_objects_are_kept_whole() {
        let prune = Prune::for_paths(["$.id"]);
        for body in [r#"[{"id": 1}, 2]"#, "\"text\"", "42.10", "null", "true"] {
            let want: Value = serde_json::from_str(body).expect("valid");
            assert_eq!(
                prune.parse(body.as_bytes()).expect("parses"),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_json_is_an_error_even_where_nothing_is_kept() {
        let prune = Prune::for_paths(["$.id"]);
        for body in [
            r#"{"id": 1, "skipped": [1, 2,}"#,
            r#"{"id": 1} trailing"#,
            r#"{"id": 1, "s": "\x"}"#,
            "",
            r#"{"id": 1"#,
        ] {
            assert!(prune.parse(body.as_bytes()).is_err(), "{body}");
        }
    }
}

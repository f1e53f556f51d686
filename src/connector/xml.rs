//! SOAP/XML body → `serde_json::Value`, refusing DTDs.
//!
//! Convention (what mapping JSONPaths see):
//! * the document becomes `{ "<root local name>": <element> }`;
//! * names lose their namespace prefix (`sf:Amount` → `Amount`, `soapenv:Body` → `Body`);
//! * an element with neither attributes nor child elements becomes its text, trimmed
//!   (`<Amount>10.5</Amount>` → `"10.5"`; empty → `""`); `xsi:nil="true"` becomes `null`;
//! * otherwise an object: attributes as `"@name"` (`xsi:type` → `"@type"`, `xmlns*`
//!   dropped), child elements by name, non-blank text as `"#text"`;
//! * repeated siblings become an array; names listed in `always_array` are arrays even when
//!   they occur once (Salesforce sends 1–100 `Notification`s);
//! * all values are strings: XML has no number type, so amounts stay exact.
//!
//! Safety: any `<!DOCTYPE` is refused (so no external entities and no entity expansion can
//! exist); references other than the five predefined entities and character references are
//! refused; depth and element count are bounded. Error messages carry a byte offset and a
//! fixed reason, never document content.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use serde_json::{Map, Value};

/// Deepest element nesting accepted (a Salesforce envelope is 5 deep).
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one document (100 notifications × ~100 fields fit easily).
pub const MAX_ELEMENTS: usize = 100_000;

struct Frame {
    name: String,
    attrs: Map<String, Value>,
    nil: bool,
    children: Map<String, Value>,
    text: String,
}

/// Parses `body` (UTF-8, optional BOM) into a JSON value following the module convention.
pub fn to_value(body: &[u8], always_array: &[String]) -> Result<Value, String> {
    // Two of the real Salesforce captures start with a UTF-8 BOM.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text =
        std::str::from_utf8(body).map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let mut elements = 0usize;
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|_| format!("malformed XML near byte {pos}"))?;
        match event {
            Event::DocType(_) => {
                return Err(format!(
                    "DTD (<!DOCTYPE) at byte {pos} refused: entities are not supported"
                ));
            }
            Event::Start(_) | Event::Empty(_) if root.is_some() && stack.is_empty() => {
                return Err(format!("second root element at byte {pos}"));
            }
            Event::Start(e) => {
                elements += 1;
                check_bounds(stack.len() + 1, elements)?;
                stack.push(open(&e, pos)?);
            }
            Event::Empty(e) => {
                elements += 1;
                check_bounds(stack.len() + 1, elements)?;
                let frame = open(&e, pos)?;
                close(frame, &mut stack, &mut root, always_array);
            }
            Event::End(_) => {
                let frame = stack
                    .pop()
                    .ok_or_else(|| format!("unexpected end tag at byte {pos}"))?;
                close(frame, &mut stack, &mut root, always_array);
            }
            Event::Text(t) => push_text(&mut stack, &t.xml10_content(), pos)?,
            Event::CData(c) => {
                let raw = c.into_inner();
                push_text(&mut stack, &raw, pos)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match predefined(&r.xml10_content()) {
                        Some(s) => s.to_string(),
                        None => {
                            return Err(format!(
                                "entity reference at byte {pos} refused: only the predefined XML entities are supported"
                            ));
                        }
                    },
                    Err(_) => return Err(format!("invalid character reference at byte {pos}")),
                };
                push_text(&mut stack, &resolved, pos)?;
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("document ends before its root element is closed".to_string());
    }
    match root {
        Some((name, value)) => {
            let mut m = Map::new();
            m.insert(name, value);
            Ok(Value::Object(m))
        }
        None => Err("no root element".to_string()),
    }
}

fn check_bounds(depth: usize, elements: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("XML nests deeper than {MAX_DEPTH} elements"));
    }
    if elements > MAX_ELEMENTS {
        return Err(format!("XML has more than {MAX_ELEMENTS} elements"));
    }
    Ok(())
}

fn predefined(name: &str) -> Option<&'static str> {
    match name {
        "lt" => Some("<"),
        "gt" => Some(">"),
        "amp" => Some("&"),
        "apos" => Some("'"),
        "quot" => Some("\""),
        _ => None,
    }
}

fn local(qname: &str) -> String {
    match qname.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => qname.to_string(),
    }
}

fn open(e: &BytesStart<'_>, pos: u64) -> Result<Frame, String> {
    let mut attrs = Map::new();
    let mut nil = false;
    for attr in e.attributes() {
        let attr = attr.map_err(|_| format!("malformed attribute near byte {pos}"))?;
        let key = attr.key.as_ref();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|_| format!("attribute value near byte {pos} uses an unsupported entity"))?
            .into_owned();
        let name = local(key);
        if name == "nil" && value == "true" {
            nil = true;
            continue;
        }
        attrs.insert(format!("@{name}"), Value::String(value));
    }
    Ok(Frame {
        name: local(e.name().as_ref()),
        attrs,
        nil,
        children: Map::new(),
        text: String::new(),
    })
}

fn push_text(stack: &mut [Frame], text: &str, pos: u64) -> Result<(), String> {
    match stack.last_mut() {
        Some(top) => {
            top.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(format!("text outside the root element at byte {pos}")),
    }
}

fn close(
    frame: Frame,
    stack: &mut [Frame],
    root: &mut Option<(String, Value)>,
    always_array: &[String],
) {
    let text = frame.text.trim();
    let value = if frame.attrs.is_empty() && frame.children.is_empty() {
        if frame.nil && text.is_empty() {
            Value::Null
        } else {
            Value::String(text.to_string())
        }
    } else {
        let mut obj = frame.attrs;
        for (k, v) in frame.children {
            obj.insert(k, v);
        }
        if !text.is_empty() {
            obj.insert("#text".to_string(), Value::String(text.to_string()));
        }
        Value::Object(obj)
    };
    let Some(parent) = stack.last_mut() else {
        *root = Some((frame.name, value));
        return;
    };
    let force_array = always_array.contains(&frame.name);
    match parent.children.get_mut(&frame.name) {
        // An element's own value is never an array, so an array here holds earlier siblings.
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = std::mem::take(existing);
            *existing = Value::Array(vec![first, value]);
        }
        None if force_array => {
            parent
                .children
                .insert(frame.name, Value::Array(vec![value]));
        }
        None => {
            parent.children.insert(frame.name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_attributes_and_repeats_follow_the_convention() {
        let xml = br#"<?xml version="1.0"?><a:Root xmlns:a="urn:x" xmlns:xsi="urn:xsi"><a:Item xsi:type="sf:T" k="1"><a:V>x &amp; y</a:V></a:Item><a:Item><a:V xsi:nil="true"/></a:Item><One>1</One></a:Root>"#;
        let v = to_value(xml, &[]).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"Root": {"Item": [{"@type": "sf:T", "@k": "1", "V": "x & y"}, {"V": null}], "One": "1"}})
        );
    }

    #[test]
    fn always_array_names_are_arrays_even_when_single() {
        let v = to_value(b"<r><N>1</N></r>", &["N".to_string()]).unwrap_or_default();
        assert_eq!(v, serde_json::json!({"r": {"N": ["1"]}}));
    }

    #[test]
    fn an_xxe_envelope_fails_fast_without_echoing_file_content() {
        let xml = br#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
        let err = to_value(xml, &[]).err().unwrap_or_default();
        assert!(err.contains("DTD"), "{err}");
        assert!(!err.contains("passwd") && !err.contains("root:"), "{err}");
    }

    #[test]
    fn a_billion_laughs_envelope_is_refused() {
        let mut xml = String::from("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_string()
            } else {
                format!("lol{}", i - 1)
            };
            xml.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&{prev};").repeat(10)
            ));
        }
        xml.push_str("]><lolz>&lol9;</lolz>");
        let err = to_value(xml.as_bytes(), &[]).err().unwrap_or_default();
        assert!(err.contains("DTD"), "{err}");
    }

    #[test]
    fn an_undeclared_entity_without_a_dtd_is_refused() {
        let err = to_value(b"<a>&secret;</a>", &[]).err().unwrap_or_default();
        assert!(err.contains("entity"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        let err = to_value(xml.as_bytes(), &[]).err().unwrap_or_default();
        assert!(err.contains("deeper"), "{err}");
    }

    #[test]
    fn mismatched_tags_are_malformed() {
        assert!(to_value(b"<a><b></a>", &[]).is_err());
        assert!(to_value(b"", &[]).is_err());
        assert!(to_value(b"<a/><b/>", &[]).is_err());
    }
}

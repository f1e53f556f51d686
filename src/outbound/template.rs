//! Postback templates: compiled once at start-up, rendered per delivery.
//!
//! Contract
//! - Input (compile): a GET URL template string or a POST JSON body template from config.
//!   Input (render): the [`PostbackValues`] of one conversion.
//! - Output: [`UrlTemplate`] / [`BodyTemplate`] (compiled segments); rendering gives a
//!   `url::Url` with every value percent-encoded as a query component, or JSON bytes in which
//!   every substituted value is a JSON string escaped by serde_json.
//! - Errors: [`TemplateError`] at compile time (unknown token, unclosed brace, not a URL,
//!   not JSON). Rendering a compiled URL template cannot meet an unknown token; it can only
//!   fail if the result is not a URL ([`RenderError`]), which compile-time validation makes
//!   practically unreachable.
//! - Side effects: none.

use std::fmt;

use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// Everything except RFC 3986 "unreserved" is encoded, so a value can never introduce `&`,
/// `=`, `#`, `/`, `?` or `+` into the URL, wherever in the URL the token sits.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A token that may appear as `{name}` in a template. Closed: a new token is a code change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Token {
    ClickId,
    ConversionId,
    TransactionId,
    OfferId,
    AffiliateId,
    Event,
    Status,
    Payout,
    Currency,
    Sub1,
    Sub2,
    Sub3,
    Sub4,
    Sub5,
    /// Unix seconds of the conversion (`occurred_at`).
    Timestamp,
}

impl Token {
    /// All tokens, in documentation order.
    pub const ALL: [Token; 15] = [
        Token::ClickId,
        Token::ConversionId,
        Token::TransactionId,
        Token::OfferId,
        Token::AffiliateId,
        Token::Event,
        Token::Status,
        Token::Payout,
        Token::Currency,
        Token::Sub1,
        Token::Sub2,
        Token::Sub3,
        Token::Sub4,
        Token::Sub5,
        Token::Timestamp,
    ];

    /// The name written between braces.
    pub fn name(self) -> &'static str {
        match self {
            Token::ClickId => "click_id",
            Token::ConversionId => "conversion_id",
            Token::TransactionId => "transaction_id",
            Token::OfferId => "offer_id",
            Token::AffiliateId => "affiliate_id",
            Token::Event => "event",
            Token::Status => "status",
            Token::Payout => "payout",
            Token::Currency => "currency",
            Token::Sub1 => "sub1",
            Token::Sub2 => "sub2",
            Token::Sub3 => "sub3",
            Token::Sub4 => "sub4",
            Token::Sub5 => "sub5",
            Token::Timestamp => "timestamp",
        }
    }

    fn parse(name: &str) -> Option<Token> {
        Token::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// The values of one conversion, as the outbound stage sees them. Built by the pipeline from
/// the `Decision` (postgate's domain types are rendered to their wire strings here: the payout
/// is an exact decimal string, never a float).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PostbackValues {
    pub click_id: Option<String>,
    pub conversion_id: String,
    pub transaction_id: String,
    pub offer_id: String,
    pub affiliate_id: String,
    pub event: String,
    pub status: String,
    /// Exact decimal string in `currency`, e.g. `"12.50"`.
    pub payout: String,
    pub currency: String,
    /// `sub1`..`sub5`; absent ones render as the empty string (they are optional by nature,
    /// unlike an unknown token, which is a start-up error).
    pub subs: [Option<String>; 5],
    pub occurred_at: DateTime<Utc>,
}

impl PostbackValues {
    /// The raw (unencoded) value of a token.
    pub fn get(&self, token: Token) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        match token {
            Token::ClickId => opt(&self.click_id),
            Token::ConversionId => self.conversion_id.clone(),
            Token::TransactionId => self.transaction_id.clone(),
            Token::OfferId => self.offer_id.clone(),
            Token::AffiliateId => self.affiliate_id.clone(),
            Token::Event => self.event.clone(),
            Token::Status => self.status.clone(),
            Token::Payout => self.payout.clone(),
            Token::Currency => self.currency.clone(),
            Token::Sub1 => opt(&self.subs[0]),
            Token::Sub2 => opt(&self.subs[1]),
            Token::Sub3 => opt(&self.subs[2]),
            Token::Sub4 => opt(&self.subs[3]),
            Token::Sub5 => opt(&self.subs[4]),
            Token::Timestamp => self.occurred_at.timestamp().to_string(),
        }
    }
}

/// Compile-time template errors; each says where in the template the problem is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unknown token {{{name}}} at byte {at}; known tokens: {known}")]
    UnknownToken {
        name: String,
        at: usize,
        known: String,
    },
    #[error("unclosed '{{' at byte {at}")]
    Unclosed { at: usize },
    #[error("not a valid absolute URL once tokens are filled in: {reason}")]
    BadUrl { reason: String },
    #[error("URL scheme must be http or https, got {scheme:?}")]
    BadScheme { scheme: String },
    #[error("tokens are not allowed in the scheme or host of a postback URL")]
    TokenInAuthority,
    #[error("body template is not valid JSON: {reason}")]
    BadJson { reason: String },
    #[error("body template key {key:?} contains a token; only values may")]
    TokenInKey { key: String },
}

/// Errors that can only happen when rendering.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("rendered postback URL is invalid: {reason}")]
    BadUrl { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Token(Token),
}

/// A string with `{token}` placeholders, split into segments once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segments(Vec<Segment>);

impl Segments {
    fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut out = Vec::new();
        let mut rest = src;
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                out.push(Segment::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(TemplateError::Unclosed { at: offset + open });
            };
            let name = &after[..close];
            let token = Token::parse(name).ok_or_else(|| TemplateError::UnknownToken {
                name: name.to_owned(),
                at: offset + open,
                known: Token::ALL.map(|t| t.name()).join(", "),
            })?;
            out.push(Segment::Token(token));
            let consumed = open + 1 + close + 1;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if !rest.is_empty() {
            out.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Segments(out))
    }

    fn has_tokens(&self) -> bool {
        self.0.iter().any(|s| matches!(s, Segment::Token(_)))
    }

    fn render(&self, mut value: impl FnMut(Token) -> String) -> String {
        let mut s = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Token(t) => s.push_str(&value(*t)),
            }
        }
        s
    }
}

/// A compiled GET postback URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    source: String,
    segments: Segments,
}

impl UrlTemplate {
    /// Compiles a template such as
    /// `https://aff.example/pb?click={click_id}&amount={payout}&cur={currency}`.
    ///
    /// Tokens may appear in the path and query only: a token in the host would let
    /// conversion data choose where we connect.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let segments = Segments::parse(src)?;
        // Validate the shape with a harmless stand-in value for every token.
        let probe = segments.render(|_| "x".to_owned());
        let url = url::Url::parse(&probe).map_err(|e| TemplateError::BadUrl {
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TemplateError::BadScheme {
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host().is_none() {
            return Err(TemplateError::BadUrl {
                reason: "no host".to_owned(),
            });
        }
        // The authority ends at the first '/', '?' or '#' after "://".
        if let Some(first_literal) = segments.0.first() {
            let authority_end = match first_literal {
                Segment::Literal(l) => l
                    .find("://")
                    .and_then(|p| l[p + 3..].find(['/', '?', '#']).map(|q| p + 3 + q)),
                Segment::Token(_) => None,
            };
            if authority_end.is_none() && segments.has_tokens() {
                return Err(TemplateError::TokenInAuthority);
            }
        }
        Ok(Self {
            source: src.to_owned(),
            segments,
        })
    }

    /// The template as configured (for `postgate check` and logs).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Fills in the values, percent-encoding each as a URL component.
    pub fn render(&self, values: &PostbackValues) -> Result<url::Url, RenderError> {
        let s = self
            .segments
            .render(|t| utf8_percent_encode(&values.get(t), COMPONENT).to_string());
        url::Url::parse(&s).map_err(|e| RenderError::BadUrl {
            reason: e.to_string(),
        })
    }
}

/// A compiled POST JSON body template: a JSON document whose string values may contain
/// tokens. Substituted values are always JSON strings; escaping is serde_json's, so a value
/// cannot break out of its string.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyTemplate {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// JSON without tokens, copied as is.
    Fixed(Value),
    Templated(Segments),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl BodyTemplate {
    /// Compiles a JSON template such as
    /// `{"event": "{event}", "amount": "{payout}", "meta": {"click": "{click_id}"}}`.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let value: Value = serde_json::from_str(src).map_err(|e| TemplateError::BadJson {
            reason: e.to_string(),
        })?;
        Ok(Self {
            root: compile_node(value)?,
        })
    }

    /// A body carrying every token, for endpoints that configure no template.
    pub fn canonical() -> Self {
        let root = Node::Object(
            Token::ALL
                .iter()
                .map(|t| {
                    (
                        t.name().to_owned(),
                        Node::Templated(Segments(vec![Segment::Token(*t)])),
                    )
                })
                .collect(),
        );
        Self { root }
    }

    /// Renders the JSON body bytes (exactly what is signed and sent).
    pub fn render(&self, values: &PostbackValues) -> Vec<u8> {
        let v = render_node(&self.root, values);
        // Serialising a Value we built cannot fail (string keys only); keep the error path
        // anyway rather than unwrap.
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

fn compile_node(v: Value) -> Result<Node, TemplateError> {
    Ok(match v {
        Value::String(s) => {
            let segs = Segments::parse(&s)?;
            if segs.has_tokens() {
                Node::Templated(segs)
            } else {
                Node::Fixed(Value::String(s))
            }
        }
        Value::Array(items) => Node::Array(
            items
                .into_iter()
                .map(compile_node)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut fields = Vec::with_capacity(map.len());
            for (k, v) in map {
                if Segments::parse(&k).map(|s| s.has_tokens()).unwrap_or(true) {
                    return Err(TemplateError::TokenInKey { key: k });
                }
                fields.push((k, compile_node(v)?));
            }
            Node::Object(fields)
        }
        other => Node::Fixed(other),
    })
}

fn render_node(n: &Node, values: &PostbackValues) -> Value {
    match n {
        Node::Fixed(v) => v.clone(),
        Node::Templated(segs) => Value::String(segs.render(|t| values.get(t))),
        Node::Array(items) => Value::Array(items.iter().map(|i| render_node(i, values)).collect()),
        Node::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), render_node(v, values)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn values() -> PostbackValues {
        PostbackValues {
            click_id: Some("ck_AbC-123".into()),
            conversion_id: "42".into(),
            transaction_id: "ord 9007199254740993".into(),
            offer_id: "7".into(),
            affiliate_id: "aff-1".into(),
            event: "purchase".into(),
            status: "approved".into(),
            payout: "12.50".into(),
            currency: "USD".into(),
            subs: [
                Some("a&b=c".into()),
                Some("x/y?z#w".into()),
                None,
                Some("ü +".into()),
                None,
            ],
            occurred_at: Utc
                .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
                .single()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn every_token_renders_url_encoded_as_a_query_component() {
        let t = UrlTemplate::parse(
            "https://aff.example/pb?c={click_id}&cv={conversion_id}&tx={transaction_id}&o={offer_id}\
             &a={affiliate_id}&e={event}&st={status}&p={payout}&cur={currency}&s1={sub1}&s2={sub2}\
             &s3={sub3}&s4={sub4}&s5={sub5}&ts={timestamp}",
        )
        .expect("test value");
        let url = t.render(&values()).expect("test value");
        assert_eq!(
            url.as_str(),
            "https://aff.example/pb?c=ck_AbC-123&cv=42&tx=ord%209007199254740993&o=7&a=aff-1\
             &e=purchase&st=approved&p=12.50&cur=USD&s1=a%26b%3Dc&s2=x%2Fy%3Fz%23w&s3=\
             &s4=%C3%BC%20%2B&s5=&ts=1767323045"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert!(
            pairs.contains(&("s1".into(), "a&b=c".into())),
            "value round-trips: {pairs:?}"
        );
        assert_eq!(pairs.len(), 15, "no value added a parameter");
    }

    #[test]
    fn tokens_in_the_path_are_encoded_too() {
        let t = UrlTemplate::parse("https://aff.example/pb/{sub2}/done").expect("test value");
        let url = t.render(&values()).expect("test value");
        assert_eq!(url.path(), "/pb/x%2Fy%3Fz%23w/done");
        assert_eq!(url.query(), None);
    }

    #[test]
    fn an_unknown_token_is_a_compile_error_that_names_it() {
        let err = UrlTemplate::parse("https://aff.example/pb?c={clickid}").expect_err("test error");
        assert!(
            matches!(&err, TemplateError::UnknownToken { name, at: 25, .. } if name == "clickid")
        );
        assert!(
            err.to_string().contains("click_id"),
            "lists known tokens: {err}"
        );
    }

    #[test]
    fn an_unclosed_brace_is_a_compile_error() {
        assert_eq!(
            UrlTemplate::parse("https://aff.example/pb?c={click_id"),
            Err(TemplateError::Unclosed { at: 25 })
        );
    }

    #[test]
    fn a_template_must_be_an_http_url_without_tokens_in_the_host() {
        assert!(matches!(
            UrlTemplate::parse("ftp://x.example/{event}"),
            Err(TemplateError::BadScheme { .. })
        ));
        assert!(matches!(
            UrlTemplate::parse("not a url"),
            Err(TemplateError::BadUrl { .. })
        ));
        assert_eq!(
            UrlTemplate::parse("https://{sub1}.evil.example/pb"),
            Err(TemplateError::TokenInAuthority)
        );
        assert_eq!(
            UrlTemplate::parse("https://{sub1}"),
            Err(TemplateError::TokenInAuthority)
        );
        assert!(UrlTemplate::parse("https://aff.example").is_ok());
    }

    #[test]
    fn body_values_are_json_escaped_strings_and_structure_is_kept() {
        let t = BodyTemplate::parse(
            r#"{"event":"{event}","amount":"{payout}","nested":{"s":"pre-{sub2}-post","n":3},"list":["{currency}",true]}"#,
        )
        .expect("test value");
        let mut v = values();
        v.subs[1] = Some(r#"","evil":"1"}"#.into());
        let body: Value = serde_json::from_slice(&t.render(&v)).expect("test value");
        assert_eq!(
            body,
            serde_json::json!({
                "event": "purchase",
                "amount": "12.50",
                "nested": {"s": "pre-\",\"evil\":\"1\"}-post", "n": 3},
                "list": ["USD", true]
            })
        );
    }

    #[test]
    fn body_templates_reject_bad_json_unknown_tokens_and_templated_keys() {
        assert!(matches!(
            BodyTemplate::parse("{"),
            Err(TemplateError::BadJson { .. })
        ));
        assert!(matches!(
            BodyTemplate::parse(r#"{"a":"{nope}"}"#),
            Err(TemplateError::UnknownToken { .. })
        ));
        assert!(matches!(
            BodyTemplate::parse(r#"{"{event}":1}"#),
            Err(TemplateError::TokenInKey { .. })
        ));
    }

    #[test]
    fn the_canonical_body_carries_every_token() {
        let body: Value = serde_json::from_slice(&BodyTemplate::canonical().render(&values()))
            .expect("test value");
        let obj = body.as_object().expect("test value");
        assert_eq!(obj.len(), Token::ALL.len());
        assert_eq!(obj["timestamp"], "1767323045");
        assert_eq!(obj["sub3"], "");
    }
}

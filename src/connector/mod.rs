//! Connector stage: authenticate and decode a webhook or callback.
//!
//! Contract:
//! * input: a [`RawRequest`] (method, path and query, headers, raw body bytes, peer address,
//!   receive time) and a [`Connector`] compiled from `connectors/<name>.toml`;
//! * [`Connector::verify`] runs every `[[auth]]` check (all must pass) and decodes the body
//!   into a `serde_json::Value` → [`VerifiedRequest`], or a [`VerifyError`];
//! * [`Connector::decode`] splits it into events, each with an event type and a dedupe id
//!   → `Vec<`[`VerifiedEvent`]`>`, or a [`DecodeError`];
//! * [`Connector::receipt`] says what the source needs back on success (JSON, the Salesforce
//!   SOAP `<Ack>true</Ack>`, or fixed text).
//!
//! No side effects beyond reading the definition file at load. A bad definition is a
//! [`ConfigError`] (`file:line: reason`) at start-up, never a runtime surprise.

mod auth;
pub mod error;
pub mod path;
pub mod prune;
pub mod spec;
pub mod xml;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use toml::Spanned;

pub use auth::MAX_SIGNATURES;
pub use error::{ConfigError, DecodeError, VerifyError};
use path::{CompiledPath, scalar_text};
pub use spec::BodyFormat;
use spec::{ConnectorFile, LocatorFile, ResponseKind};

/// Default body limit: Shopify orders with many lines stay well below this.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Salesforce sends at most 100 notifications per message; leave headroom.
pub const DEFAULT_MAX_EVENTS: usize = 1000;
/// Shortest secret or token accepted at load: 16 bytes (128 bits), the strength of the
/// click IDs. Every platform we ship issues longer ones (Shopify 32 hex chars, Standard
/// Webhooks 24+ bytes); test vectors with shorter toy secrets load with a lower value.
pub const DEFAULT_MIN_SECRET_BYTES: usize = 16;

/// The body Salesforce needs: HTTP 200 alone makes it retry for 24 h.
pub const SALESFORCE_ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
);

/// An HTTP request as received, before anything is trusted.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    /// e.g. `/hooks/salesforce?token=...`
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub peer_ip: Option<IpAddr>,
    pub received_at: DateTime<Utc>,
}

impl RawRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// First URL query parameter with this name, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(&self.path_and_query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    match path_and_query.split_once('?') {
        Some((_, q)) => url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect(),
        None => Vec::new(),
    }
}

/// Entries named `field` in a `k=v,k=v` header (Stripe-Signature), in order.
pub(crate) fn header_field<'a>(raw: &'a str, field: &str) -> Vec<&'a str> {
    raw.split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.trim() == field)
        .map(|(_, v)| v.trim())
        .collect()
}

/// A request whose authentication passed and whose body parsed. Only
/// [`Connector::verify`] (and the explicitly unverified [`Connector::parse_unverified`]
/// used by `postgate map`) build one.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    source: String,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    body: Value,
    received_at: DateTime<Utc>,
}

impl VerifiedRequest {
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn body(&self) -> &Value {
        &self.body
    }
}

/// One event of a verified request: what the mapping stage consumes.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    source: String,
    event_type: String,
    event_id: String,
    payload: Value,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    received_at: DateTime<Utc>,
}

impl VerifiedEvent {
    /// Connector name.
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The dedupe key (e.g. `X-Shopify-Webhook-Id`, Salesforce notification `Id`).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
    pub fn payload(&self) -> &Value {
        &self.payload
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn received_at(&self) -> DateTime<Utc> {
        self.received_at
    }
}

/// What to answer the source once its events are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// The gateway's own JSON receipt (accepted / duplicate / rejected + reasons).
    Json,
    /// Fixed body and content type; Salesforce's SOAP Ack is `Text` with [`SALESFORCE_ACK`].
    Text { content_type: String, body: String },
}

/// Where `${VAR}` references in a definition file get their values.
#[derive(Debug, Clone, Default)]
pub enum Env {
    /// The process environment; an unset variable is a load error.
    #[default]
    Process,
    /// A fixed map (tests).
    Fixed(BTreeMap<String, String>),
    /// The process environment, with a placeholder for unset variables: `postgate check`
    /// validates definitions on machines that do not hold production secrets.
    ProcessOrPlaceholder,
}

/// Base64 of "check-placeholder-secret-0000": valid as raw and as base64 key material.
pub const PLACEHOLDER_SECRET: &str = "Y2hlY2stcGxhY2Vob2xkZXItc2VjcmV0LTAwMDA=";

/// Load-time knobs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub env: Env,
    pub min_secret_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            env: Env::Process,
            min_secret_bytes: DEFAULT_MIN_SECRET_BYTES,
        }
    }
}

/// Replaces `${VAR}` in `text`. Values may not contain newlines, so line numbers in
/// errors still match the file. Values are TOML-escaped because they land inside strings.
pub fn interpolate(file: &Path, text: &str, env: &Env) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            ConfigError::at_span(
                file,
                text,
                Some(offset + start..offset + start),
                "unterminated `${`",
            )
        })?;
        let name = &after[..end];
        let err = |reason: String| {
            ConfigError::at_span(file, text, Some(offset + start..offset + start), reason)
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!("`${{{name}}}` is not a valid variable name")));
        }
        let value = match env {
            Env::Process => std::env::var(name)
                .map_err(|_| err(format!("environment variable `{name}` is not set")))?,
            Env::Fixed(m) => m
                .get(name)
                .cloned()
                .ok_or_else(|| err(format!("variable `{name}` is not set")))?,
            Env::ProcessOrPlaceholder => {
                std::env::var(name).unwrap_or_else(|_| PLACEHOLDER_SECRET.to_string())
            }
        };
        if value.contains('\n') || value.contains('\r') {
            return Err(err(format!("variable `{name}` contains a newline")));
        }
        out.push_str(&value.replace('\\', "\\\\").replace('"', "\\\""));
        let consumed = start + 2 + end + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    out.push_str(rest);
    Ok(out)
}

/// Where a value lives (compiled `LocatorFile`).
#[derive(Debug, Clone)]
pub(crate) enum Locator {
    Header(String),
    HeaderField(String, String),
    Path(CompiledPath),
    Query(String),
    Constant(String),
}

impl Locator {
    pub(crate) fn compile(
        file: &Path,
        text: &str,
        l: &Spanned<LocatorFile>,
    ) -> Result<Locator, ConfigError> {
        let f = l.get_ref();
        let err = |r: String| ConfigError::at_span(file, text, Some(l.span()), r);
        let set = [
            f.header.is_some(),
            f.path.is_some(),
            f.query.is_some(),
            f.constant.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(err(
                "give exactly one of `header`, `path`, `query`, `constant`".into(),
            ));
        }
        if f.field.is_some() && f.header.is_none() {
            return Err(err("`field` applies only with `header`".into()));
        }
        Ok(
            match (&f.header, &f.field, &f.path, &f.query, &f.constant) {
                (Some(h), Some(fl), ..) => Locator::HeaderField(h.clone(), fl.clone()),
                (Some(h), None, ..) => Locator::Header(h.clone()),
                (_, _, Some(p), ..) => Locator::Path(
                    CompiledPath::compile(p.get_ref())
                        .map_err(|r| ConfigError::at_span(file, text, Some(p.span()), r))?,
                ),
                (_, _, _, Some(q), _) => Locator::Query(q.clone()),
                (_, _, _, _, Some(c)) => Locator::Constant(c.clone()),
                _ => return Err(err("empty locator".into())),
            },
        )
    }

    fn describe(&self) -> String {
        match self {
            Locator::Header(h) => format!("header `{h}`"),
            Locator::HeaderField(h, f) => format!("header `{h}` field `{f}`"),
            Locator::Path(p) => format!("path `{}`", p.as_str()),
            Locator::Query(q) => format!("query parameter `{q}`"),
            Locator::Constant(c) => format!("constant `{c}`"),
        }
    }

    fn find(
        &self,
        payload: &Value,
        headers: &[(String, String)],
        query: &[(String, String)],
    ) -> Option<String> {
        let header = |h: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(h))
                .map(|(_, v)| v.as_str())
        };
        let v = match self {
            Locator::Header(h) => header(h).map(str::to_string),
            Locator::HeaderField(h, f) => header(h)
                .and_then(|raw| header_field(raw, f).into_iter().next().map(str::to_string)),
            Locator::Path(p) => p.first(payload).and_then(|h| scalar_text(h.value)),
            Locator::Query(q) => query.iter().find(|(k, _)| k == q).map(|(_, v)| v.clone()),
            Locator::Constant(c) => Some(c.clone()),
        };
        v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    }
}

/// A compiled `connectors/<name>.toml`.
#[derive(Debug)]
pub struct Connector {
    name: String,
    origin: PathBuf,
    format: BodyFormat,
    max_body_bytes: usize,
    xml_always_array: Vec<String>,
    auth: Vec<auth::Auth>,
    split: Option<CompiledPath>,
    max_events: usize,
    event_type: Locator,
    /// Dedupe id parts, joined with `:`; `true` = optional part.
    event_id: Vec<(Locator, bool)>,
    receipt: Receipt,
    /// JSON bodies: which parts to build (see [`prune`]); `None` builds them whole.
    prune: Option<prune::Prune>,
}

impl Connector {
    /// Reads, interpolates and compiles `path`; the connector is named after the file stem.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Connector, ConfigError> {
        let raw = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, 0, format!("cannot read: {e}")))?;
        let text = interpolate(path, &raw, &opts.env)?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| ConfigError::new(path, 0, "file name is not UTF-8"))?;
        Connector::from_toml(name, path, &text, opts)
    }

    /// Compiles already-interpolated TOML text; `origin` is used in error messages.
    pub fn from_toml(
        name: &str,
        origin: &Path,
        text: &str,
        opts: &LoadOptions,
    ) -> Result<Connector, ConfigError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                origin,
                0,
                format!("connector name `{name}` must be lowercase [a-z0-9_-]"),
            ));
        }
        let file: ConnectorFile =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        let mut auths = Vec::new();
        for a in &file.auth {
            auths.push(auth::compile(origin, text, a, opts.min_secret_bytes)?);
        }
        if auths.is_empty() {
            return Err(ConfigError::new(
                origin,
                0,
                "at least one [[auth]] is required (use type = \"none\" explicitly)",
            ));
        }
        if auths.len() > 1
            && let Some(none) = auths.iter().position(|a| matches!(a, auth::Auth::None))
        {
            return Err(ConfigError::at_span(
                origin,
                text,
                Some(file.auth[none].span()),
                "auth type \"none\" cannot be combined with other checks",
            ));
        }
        if let Some(always) = &file.body.xml_always_array
            && file.body.format != BodyFormat::Xml
            && !always.get_ref().is_empty()
        {
            return Err(ConfigError::at_span(
                origin,
                text,
                Some(always.span()),
                "body.xml_always_array applies only to format = \"xml\"",
            ));
        }
        for (what, limit) in [
            ("body.max_bytes", &file.body.max_bytes),
            ("event.max_events", &file.event.max_events),
        ] {
            if let Some(limit) = limit
                && *limit.get_ref() == 0
            {
                return Err(ConfigError::at_span(
                    origin,
                    text,
                    Some(limit.span()),
                    format!("{what} must be at least 1 (leave it out for the default)"),
                ));
            }
        }
        let split = match &file.event.split {
            Some(s) => Some(
                CompiledPath::compile(s.get_ref())
                    .map_err(|r| ConfigError::at_span(origin, text, Some(s.span()), r))?,
            ),
            None => None,
        };
        let event_type = Locator::compile(origin, text, &file.event.kind)?;
        if file.event.kind.get_ref().optional || file.event.id.get_ref().optional {
            return Err(ConfigError::at_span(
                origin,
                text,
                Some(file.event.id.span()),
                "`optional` applies only to `id_also` parts",
            ));
        }
        let mut event_id = vec![(Locator::compile(origin, text, &file.event.id)?, false)];
        for l in &file.event.id_also {
            event_id.push((Locator::compile(origin, text, l)?, l.get_ref().optional));
        }
        let receipt = match file.response.kind {
            ResponseKind::Json => Receipt::Json,
            ResponseKind::SoapAck => Receipt::Text {
                content_type: "text/xml; charset=utf-8".into(),
                body: SALESFORCE_ACK.into(),
            },
            ResponseKind::Text => Receipt::Text {
                content_type: file
                    .response
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                body: file.response.body.clone().unwrap_or_else(|| "OK".into()),
            },
        };
        Ok(Connector {
            name: name.to_string(),
            origin: origin.to_path_buf(),
            format: file.body.format,
            max_body_bytes: file
                .body
                .max_bytes
                .map_or(DEFAULT_MAX_BODY_BYTES, Spanned::into_inner),
            xml_always_array: file
                .body
                .xml_always_array
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            auth: auths,
            split,
            max_events: file
                .event
                .max_events
                .map_or(DEFAULT_MAX_EVENTS, Spanned::into_inner),
            event_type,
            event_id,
            receipt,
            prune: None,
        })
    }

    /// Every JSONPath this connector evaluates on a body: its auth, split and locators.
    fn json_paths(&self) -> impl Iterator<Item = &str> {
        let auth = self.auth.iter().filter_map(|a| match a {
            auth::Auth::PayloadAllowList { path, .. } => Some(path.as_str()),
            _ => None,
        });
        let locators = std::iter::once(&self.event_type)
            .chain(self.event_id.iter().map(|(l, _)| l))
            .filter_map(|l| match l {
                Locator::Path(p) => Some(p.as_str()),
                _ => None,
            });
        auth.chain(self.split.iter().map(CompiledPath::as_str))
            .chain(locators)
    }

    /// From now on, JSON bodies are built only where this connector's own paths or
    /// `mapping_paths` (those of every mapping of this connector) can reach. Connectors
    /// that split a body into events keep building it whole: their paths are relative to
    /// the items.
    pub fn prune_to<'a>(&mut self, mapping_paths: impl IntoIterator<Item = &'a str>) {
        if self.format != BodyFormat::Json || self.split.is_some() {
            return;
        }
        let mut prune = prune::Prune::for_paths(self.json_paths());
        prune.extend(mapping_paths);
        self.prune = (!prune.keeps_everything()).then_some(prune);
    }

    /// Whether JSON bodies are built only in part (see [`Connector::prune_to`]).
    pub fn is_pruned(&self) -> bool {
        self.prune.is_some()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The largest body this connector accepts, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
    pub fn origin(&self) -> &Path {
        &self.origin
    }
    pub fn format(&self) -> BodyFormat {
        self.format
    }
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// Header and query-parameter names that carry this source's secret tokens, so a copy
    /// of a verified request (the spool) can leave them out.
    pub fn secret_locations(&self) -> (Vec<&str>, Vec<&str>) {
        let mut headers = Vec::new();
        let mut query = Vec::new();
        for a in &self.auth {
            let (h, q) = a.secret_location();
            headers.extend(h);
            query.extend(q);
        }
        (headers, query)
    }

    /// Authenticates the request (all `[[auth]]` entries) and parses its body.
    pub fn verify(&self, req: &RawRequest) -> Result<VerifiedRequest, VerifyError> {
        // Raw-byte checks first: an unauthenticated body is never parsed.
        self.check_signature(req)?;
        let verified = self.parse(req)?;
        for a in &self.auth {
            a.verify_payload(&verified.body)?;
        }
        Ok(verified)
    }

    /// The checks that need only the raw request (size, IP, token, HMAC); [`Connector::verify`]
    /// runs these, then parses the body and runs payload allow-lists.
    pub fn check_signature(&self, req: &RawRequest) -> Result<(), VerifyError> {
        self.check_size(req)?;
        for a in &self.auth {
            a.verify_raw(req)?;
        }
        Ok(())
    }

    /// Parses the body WITHOUT any authentication. For `postgate map` and mapping test cases
    /// only; the HTTP path must call [`Connector::verify`].
    pub fn parse_unverified(&self, req: &RawRequest) -> Result<VerifiedRequest, VerifyError> {
        self.check_size(req)?;
        self.parse(req)
    }

    fn check_size(&self, req: &RawRequest) -> Result<(), VerifyError> {
        if req.body.len() > self.max_body_bytes {
            return Err(VerifyError::BodyTooLarge {
                size: req.body.len(),
                limit: self.max_body_bytes,
            });
        }
        Ok(())
    }

    fn parse(&self, req: &RawRequest) -> Result<VerifiedRequest, VerifyError> {
        let query = query_pairs(&req.path_and_query);
        let malformed = |format: &'static str| {
            move |reason: String| VerifyError::MalformedBody { format, reason }
        };
        let body = match self.format {
            BodyFormat::Json => {
                let b = req.body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&req.body);
                match &self.prune {
                    Some(prune) => prune.parse(b),
                    None => serde_json::from_slice(b),
                }
                .map_err(|e| malformed("json")(e.to_string()))?
            }
            BodyFormat::Form => {
                if std::str::from_utf8(&req.body).is_err() {
                    return Err(malformed("form")("not UTF-8".into()));
                }
                pairs_to_object(
                    url::form_urlencoded::parse(&req.body)
                        .into_owned()
                        .collect(),
                )
            }
            BodyFormat::Query => pairs_to_object(query.clone()),
            BodyFormat::Xml => {
                xml::to_value(&req.body, &self.xml_always_array).map_err(malformed("xml"))?
            }
        };
        Ok(VerifiedRequest {
            source: self.name.clone(),
            headers: req.headers.clone(),
            query,
            body,
            received_at: req.received_at,
        })
    }

    /// Splits a verified request into events with their type and dedupe id. Takes the
    /// request by value: an unsplit body moves into its event instead of being copied.
    /// The first event that lacks its type or dedupe id fails the whole request; the
    /// gateway uses [`Connector::decode_each`] instead, so the others still count.
    pub fn decode(&self, req: VerifiedRequest) -> Result<Vec<VerifiedEvent>, DecodeError> {
        self.decode_each(req)?.into_iter().collect()
    }

    /// Like [`Connector::decode`], but each event decodes on its own: one notification of a
    /// hundred without an id is an error in its place, not the whole request's. Only a
    /// request with more events than the connector allows fails as a whole.
    pub fn decode_each(
        &self,
        req: VerifiedRequest,
    ) -> Result<Vec<Result<VerifiedEvent, DecodeError>>, DecodeError> {
        let VerifiedRequest {
            headers,
            query,
            body,
            received_at,
            ..
        } = req;
        let items: Vec<Value> = match &self.split {
            Some(p) => p
                .select(&body)
                .into_iter()
                .map(|h| h.value.clone())
                .collect(),
            None => vec![body],
        };
        if items.len() > self.max_events {
            return Err(DecodeError::TooManyEvents {
                count: items.len(),
                limit: self.max_events,
            });
        }
        let event = |index: usize, payload: Value| {
            let event_type = self
                .event_type
                .find(&payload, &headers, &query)
                .ok_or_else(|| DecodeError::MissingEventType {
                    index,
                    locator: self.event_type.describe(),
                })?;
            let mut parts = Vec::new();
            for (l, optional) in &self.event_id {
                match l.find(&payload, &headers, &query) {
                    Some(part) => parts.push(part),
                    None if *optional => {}
                    None => {
                        return Err(DecodeError::MissingEventId {
                            index,
                            locator: l.describe(),
                        });
                    }
                }
            }
            Ok(VerifiedEvent {
                source: self.name.clone(),
                event_type,
                event_id: parts.join(":"),
                payload,
                headers: headers.clone(),
                query: query.clone(),
                received_at,
            })
        };
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, payload)| event(index, payload))
            .collect())
    }
}

/// Form and query bodies become an object of strings; a repeated key becomes an array.
fn pairs_to_object(pairs: Vec<(String, String)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        match m.get_mut(&k) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Value::Array(vec![first, Value::String(v)]);
            }
            None => {
                m.insert(k, Value::String(v));
            }
        }
    }
    Value::Object(m)
}

/// The connector files in `dir`: every `*.toml`, in name order.
pub fn definition_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(dir, 0, format!("cannot read directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Loads every `*.toml` in `dir`, collecting all errors rather than stopping at the first.
pub fn load_dir(
    dir: &Path,
    opts: &LoadOptions,
) -> Result<BTreeMap<String, Connector>, Vec<ConfigError>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for p in definition_files(dir).map_err(|e| vec![e])? {
        match Connector::load(&p, opts) {
            Ok(c) => {
                out.insert(c.name.clone(), c);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

//! Mapping stage: one [`VerifiedEvent`] → zero or more [`CanonicalPostback`]s.
//!
//! Contract:
//! * definitions: `mappings/<connector>/<event>.toml`, compiled once by
//!   [`MappingSet::load_dir`] (JSONPaths parsed once, regexes built once, limits checked);
//!   a bad file is a [`ConfigError`] `file:line: reason`;
//! * [`MappingSet::map`] applies every mapping of the event's connector whose `[match]`
//!   holds, in file-name order, each producing one postback; no match is
//!   `unmapped_event` (nothing is dropped silently: the caller stores the event with the
//!   reason);
//! * errors ([`MapError`]) name the mapping file, the canonical field, what was tried and
//!   what JSON type was found, so an operator can fix the file without a debugger;
//! * pure: no I/O after load.
//!
//! [`check`] runs the test cases embedded in mapping files (`postgate check`, `cargo test`)
//! and maps a payload for `postgate map`.

pub mod check;
pub mod spec;
mod transform;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use regex::Regex;
use toml::Spanned;

use crate::connector::path::{CompiledPath, scalar_text, type_name};
use crate::connector::{ConfigError, VerifiedEvent};
use crate::domain::{CanonicalPostback, ReasonCode, Status};
use spec::{FieldFile, MappingFile, Meta, TestFile, TransformFile};
pub use transform::minor_unit_exponent;
use transform::{Ctx, Transform};

/// Deepest `first_of` nesting accepted.
const MAX_FIRST_OF_DEPTH: usize = 4;

/// Why an event could not be mapped. `code()` is stable; `Display` is for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("{}", unmapped_message(connector, event_type, filtered_out))]
    UnmappedEvent {
        connector: String,
        event_type: String,
        /// Mappings whose event type matched but whose filter selected nothing, each as
        /// `file (filter …)`: what an operator building a mapping needs to see.
        filtered_out: Vec<String>,
    },
    #[error("{mapping}: field `{field}`: nothing found (tried {tried})")]
    MissingField {
        mapping: String,
        field: String,
        tried: String,
    },
    #[error(
        "{mapping}: field `{field}`: `{path}` selected {} at {location}, expected a string, number or boolean",
        with_article(found)
    )]
    WrongType {
        mapping: String,
        field: String,
        path: String,
        location: String,
        found: &'static str,
    },
    #[error("{mapping}: field `{field}`: {reason}")]
    BadValue {
        mapping: String,
        field: String,
        reason: String,
    },
}

fn unmapped_message(connector: &str, event_type: &str, filtered_out: &[String]) -> String {
    if filtered_out.is_empty() {
        format!("no mapping of connector `{connector}` matches event type `{event_type}`")
    } else {
        format!(
            "no mapping of connector `{connector}` matches this `{event_type}` event: the event \
             type matches {}, but the filter selects nothing in it",
            filtered_out.join(", ")
        )
    }
}

impl MapError {
    /// The stable reason code callers see.
    pub fn code(&self) -> ReasonCode {
        match self {
            MapError::UnmappedEvent { .. } => ReasonCode::UnmappedEvent,
            MapError::MissingField { .. } => ReasonCode::MissingField,
            MapError::WrongType { .. } => ReasonCode::WrongType,
            MapError::BadValue { .. } => ReasonCode::BadValue,
        }
    }
}

#[derive(Debug, Clone)]
enum Source {
    Path(CompiledPath),
    Header(String),
    Query(String),
    Constant(String),
    Meta(Meta),
    FirstOf(Vec<Field>),
}

impl Source {
    fn push_paths<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Source::Path(p) => out.push(p.as_str()),
            Source::FirstOf(fields) => fields.iter().for_each(|f| f.source.push_paths(out)),
            Source::Header(_) | Source::Query(_) | Source::Constant(_) | Source::Meta(_) => {}
        }
    }
}

#[derive(Debug, Clone)]
struct Field {
    source: Source,
    transforms: Vec<Transform>,
    default: Option<String>,
    required: bool,
    has_minor_units: bool,
}

#[derive(Debug, Clone)]
enum TimeFormat {
    Rfc3339,
    Unix,
    UnixMs,
    Pattern(String),
}

#[derive(Debug, Clone)]
struct Match {
    event_types: Vec<String>,
    event_type_not: Vec<String>,
    event_type_regex: Option<Regex>,
    filter: Option<CompiledPath>,
}

/// A test case kept for [`check`], with the line it starts on.
#[derive(Debug)]
pub struct TestCase {
    pub line: usize,
    pub spec: TestFile,
}

/// One compiled mapping file.
#[derive(Debug)]
pub struct Mapping {
    connector: String,
    name: String,
    origin: PathBuf,
    when: Match,
    event: Field,
    status: Field,
    click_id: Option<Field>,
    transaction_id: Option<Field>,
    amount: Option<Field>,
    currency: Option<Field>,
    occurred_at: Option<(Field, TimeFormat)>,
    attributes: BTreeMap<String, Field>,
    tests: Vec<TestCase>,
}

struct Compiler<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Compiler<'_> {
    fn err(&self, span: std::ops::Range<usize>, reason: impl Into<String>) -> ConfigError {
        ConfigError::at_span(self.file, self.text, Some(span), reason)
    }

    fn field(
        &self,
        name: &str,
        f: &Spanned<FieldFile>,
        depth: usize,
    ) -> Result<Field, ConfigError> {
        let spec = f.get_ref();
        let here = |r: String| self.err(f.span(), format!("field `{name}`: {r}"));
        let sources = [
            spec.path.is_some(),
            spec.header.is_some(),
            spec.query.is_some(),
            spec.constant.is_some(),
            spec.meta.is_some(),
            !spec.first_of.is_empty(),
        ];
        if sources.iter().filter(|b| **b).count() != 1 {
            return Err(here(
                "give exactly one of `path`, `header`, `query`, `constant`, `meta`, `first_of`"
                    .into(),
            ));
        }
        if depth > MAX_FIRST_OF_DEPTH {
            return Err(here(format!(
                "`first_of` nests deeper than {MAX_FIRST_OF_DEPTH}"
            )));
        }
        if spec.format.is_some() && name != "occurred_at" {
            return Err(here("`format` applies only to `occurred_at`".into()));
        }
        let source = if let Some(p) = &spec.path {
            Source::Path(
                CompiledPath::compile(p.get_ref())
                    .map_err(|r| self.err(p.span(), format!("field `{name}`: {r}")))?,
            )
        } else if let Some(h) = &spec.header {
            Source::Header(h.clone())
        } else if let Some(q) = &spec.query {
            Source::Query(q.clone())
        } else if let Some(c) = &spec.constant {
            Source::Constant(c.clone())
        } else if let Some(m) = spec.meta {
            Source::Meta(m)
        } else {
            let mut cands = Vec::new();
            for c in &spec.first_of {
                cands.push(self.field(name, c, depth + 1)?);
            }
            Source::FirstOf(cands)
        };
        let mut transforms = Vec::new();
        let mut has_minor_units = false;
        for t in &spec.transforms {
            if matches!(t.get_ref(), TransformFile::MinorUnits) {
                if name != "amount" {
                    return Err(self.err(
                        t.span(),
                        format!("field `{name}`: `minor_units` applies only to `amount`"),
                    ));
                }
                has_minor_units = true;
            }
            transforms.push(
                Transform::compile(t.get_ref())
                    .map_err(|r| self.err(t.span(), format!("field `{name}`: {r}")))?,
            );
        }
        let first_of_minor = match &source {
            Source::FirstOf(c) => c.iter().any(|f| f.has_minor_units),
            _ => false,
        };
        Ok(Field {
            source,
            transforms,
            default: spec.default.clone(),
            required: spec.required,
            has_minor_units: has_minor_units || first_of_minor,
        })
    }
}

impl Mapping {
    /// Compiles one mapping file's text. `connector` is its directory name.
    pub fn from_toml(
        connector: &str,
        name: &str,
        origin: &Path,
        text: &str,
    ) -> Result<Mapping, ConfigError> {
        let file: MappingFile =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        let c = Compiler { file: origin, text };
        let w = file.when.get_ref();
        if w.event_type.is_empty()
            && w.event_type_not.is_empty()
            && w.event_type_regex.is_none()
            && w.filter.is_none()
        {
            return Err(c.err(
                file.when.span(),
                "[match] needs `event_type`, `event_type_not`, `event_type_regex` or `filter`",
            ));
        }
        let event_type_regex = match &w.event_type_regex {
            Some(r) => Some(
                Regex::new(r.get_ref())
                    .map_err(|e| c.err(r.span(), format!("invalid regex: {e}")))?,
            ),
            None => None,
        };
        let filter = match &w.filter {
            Some(p) => Some(CompiledPath::compile(p.get_ref()).map_err(|r| c.err(p.span(), r))?),
            None => None,
        };
        let opt = |n: &str, f: &Option<Spanned<FieldFile>>| -> Result<Option<Field>, ConfigError> {
            f.as_ref().map(|f| c.field(n, f, 0)).transpose()
        };
        let fields = &file.fields;
        let amount = opt("amount", &fields.amount)?;
        let currency = opt("currency", &fields.currency)?;
        if amount.as_ref().is_some_and(|a| a.has_minor_units) && currency.is_none() {
            return Err(c.err(
                fields.amount.as_ref().map_or(0..0, |a| a.span()),
                "`minor_units` needs a `currency` field",
            ));
        }
        let occurred_at = match &fields.occurred_at {
            Some(f) => {
                let fmt = match f.get_ref().format.as_deref() {
                    None | Some("rfc3339") => TimeFormat::Rfc3339,
                    Some("unix") => TimeFormat::Unix,
                    Some("unix_ms") => TimeFormat::UnixMs,
                    Some(p) if p.contains('%') => TimeFormat::Pattern(p.to_string()),
                    Some(other) => {
                        return Err(c.err(f.span(), format!("unknown time format `{other}`")));
                    }
                };
                Some((c.field("occurred_at", f, 0)?, fmt))
            }
            None => None,
        };
        let mut attributes = BTreeMap::new();
        for (k, f) in &file.attributes {
            attributes.insert(k.clone(), c.field(&format!("attributes.{k}"), f, 0)?);
        }
        let tests = file
            .test
            .into_iter()
            .map(|t| TestCase {
                line: crate::connector::error::line_of(text, t.span().start),
                spec: t.into_inner(),
            })
            .collect();
        Ok(Mapping {
            connector: connector.to_string(),
            name: name.to_string(),
            origin: origin.to_path_buf(),
            when: Match {
                event_types: w.event_type.clone(),
                event_type_not: w.event_type_not.clone(),
                event_type_regex,
                filter,
            },
            event: c.field("event", &fields.event, 0)?,
            status: c.field("status", &fields.status, 0)?,
            click_id: opt("click_id", &fields.click_id)?,
            transaction_id: opt("transaction_id", &fields.transaction_id)?,
            amount,
            currency,
            occurred_at,
            attributes,
            tests,
        })
    }

    pub fn connector(&self) -> &str {
        &self.connector
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn origin(&self) -> &Path {
        &self.origin
    }
    pub fn tests(&self) -> &[TestCase] {
        &self.tests
    }

    /// Whether this mapping applies to `ev`.
    pub fn matches(&self, ev: &VerifiedEvent) -> bool {
        self.matches_type(ev) && self.passes_filter(ev)
    }

    fn matches_type(&self, ev: &VerifiedEvent) -> bool {
        let w = &self.when;
        (w.event_types.is_empty() || w.event_types.iter().any(|t| t == ev.event_type()))
            && !w.event_type_not.iter().any(|t| t == ev.event_type())
            && w.event_type_regex
                .as_ref()
                .is_none_or(|r| r.is_match(ev.event_type()))
    }

    fn passes_filter(&self, ev: &VerifiedEvent) -> bool {
        self.when
            .filter
            .as_ref()
            .is_none_or(|f| !f.select(ev.payload()).is_empty())
    }

    /// Builds the postback for an event this mapping matches.
    pub fn apply(&self, ev: &VerifiedEvent) -> Result<CanonicalPostback, MapError> {
        let mapping = self.origin.display().to_string();
        let bad = |field: &str, reason: String| MapError::BadValue {
            mapping: mapping.clone(),
            field: field.to_string(),
            reason,
        };
        let no_ctx = Ctx { currency: None };
        let get =
            |name: &str, f: &Option<Field>, ctx: &Ctx<'_>| -> Result<Option<String>, MapError> {
                match f {
                    Some(f) => self.resolve(name, f, ev, ctx),
                    None => Ok(None),
                }
            };
        let event = self
            .resolve("event", &self.event, ev, &no_ctx)?
            .ok_or_else(|| self.missing("event", &self.event, ev.payload()))?;
        let status_text = self
            .resolve("status", &self.status, ev, &no_ctx)?
            .ok_or_else(|| self.missing("status", &self.status, ev.payload()))?;
        let status = Status::parse(&status_text).ok_or_else(|| {
            bad(
                "status",
                format!("`{status_text}` is not one of approved, pending, rejected, reversed"),
            )
        })?;
        let currency = match get("currency", &self.currency, &no_ctx)? {
            Some(c) => {
                let up = c.trim().to_ascii_uppercase();
                if up.len() != 3 || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(bad("currency", format!("`{c}` is not an ISO 4217 code")));
                }
                Some(up)
            }
            None => None,
        };
        let ctx = Ctx {
            currency: currency.as_deref(),
        };
        let amount = match get("amount", &self.amount, &ctx)? {
            Some(a) => Some(transform::parse_decimal(&a).map_err(|r| bad("amount", r))?),
            None => None,
        };
        if amount.is_some() && currency.is_none() {
            return Err(bad(
                "amount",
                "an amount needs a currency, and the currency field found nothing".into(),
            ));
        }
        let occurred_at = match &self.occurred_at {
            Some((f, fmt)) => match self.resolve("occurred_at", f, ev, &no_ctx)? {
                Some(t) => Some(parse_time(&t, fmt).map_err(|r| bad("occurred_at", r))?),
                None => None,
            },
            None => None,
        };
        let mut attributes = BTreeMap::new();
        for (k, f) in &self.attributes {
            if let Some(v) = self.resolve(&format!("attributes.{k}"), f, ev, &no_ctx)? {
                attributes.insert(k.clone(), v);
            }
        }
        Ok(CanonicalPostback {
            source: ev.source().to_string(),
            source_event_id: Some(ev.event_id().to_string()),
            event: Some(event),
            click_id: get("click_id", &self.click_id, &no_ctx)?,
            transaction_id: get("transaction_id", &self.transaction_id, &no_ctx)?,
            status,
            amount,
            currency,
            occurred_at,
            attributes,
        })
    }

    /// The optional fields this mapping defines that found nothing in `ev`, each as
    /// `file: field `x`: nothing found (tried …)`: what `postgate map` tells an operator whose
    /// postback came out without, say, a click ID. `currency` is the postback's, for
    /// transforms that need it.
    pub fn unfilled(&self, ev: &VerifiedEvent, currency: Option<&str>) -> Vec<String> {
        let ctx = Ctx { currency };
        let optional = [
            ("click_id", self.click_id.as_ref()),
            ("transaction_id", self.transaction_id.as_ref()),
            ("amount", self.amount.as_ref()),
            ("currency", self.currency.as_ref()),
            ("occurred_at", self.occurred_at.as_ref().map(|(f, _)| f)),
        ]
        .into_iter()
        .filter_map(|(name, f)| Some((name.to_owned(), f?)))
        .chain(
            self.attributes
                .iter()
                .map(|(k, f)| (format!("attributes.{k}"), f)),
        );
        optional
            .filter(|(name, f)| matches!(self.resolve(name, f, ev, &ctx), Ok(None)))
            .map(|(name, f)| self.missing(&name, f, ev.payload()).to_string())
            .collect()
    }

    fn missing(&self, name: &str, f: &Field, payload: &Value) -> MapError {
        MapError::MissingField {
            mapping: self.origin.display().to_string(),
            field: name.to_string(),
            tried: describe(f, payload),
        }
    }

    /// Source → transforms → default; empty strings count as absent ("first non-empty"). A
    /// path that selects several nodes gives the first that is non-empty once transformed, so
    /// a blank `subid` note attribute does not hide a `click_id` after it.
    fn resolve(
        &self,
        name: &str,
        f: &Field,
        ev: &VerifiedEvent,
        ctx: &Ctx<'_>,
    ) -> Result<Option<String>, MapError> {
        let mut value = None;
        match &f.source {
            // Lazily: nodes after the first good value are neither type-checked nor transformed.
            Source::Path(p) => {
                for hit in p.select(ev.payload()) {
                    if hit.value.is_null() {
                        continue;
                    }
                    let Some(text) = scalar_text(hit.value) else {
                        return Err(MapError::WrongType {
                            mapping: self.origin.display().to_string(),
                            field: name.to_string(),
                            path: p.as_str().to_string(),
                            location: hit.location,
                            found: type_name(hit.value),
                        });
                    };
                    value = self.transformed(name, f, text, ctx)?;
                    if value.is_some() {
                        break;
                    }
                }
            }
            Source::FirstOf(cands) => {
                for c in cands {
                    if let Some(v) = self.resolve(name, c, ev, ctx)? {
                        value = self.transformed(name, f, v, ctx)?;
                        break;
                    }
                }
            }
            source => {
                if let Some(raw) = single_value(source, ev) {
                    value = self.transformed(name, f, raw, ctx)?;
                }
            }
        }
        let value = value.or_else(|| f.default.clone());
        if value.is_none() && f.required {
            return Err(self.missing(name, f, ev.payload()));
        }
        Ok(value)
    }

    /// One source value through the field's transforms; `None` if it is or becomes empty.
    fn transformed(
        &self,
        name: &str,
        f: &Field,
        raw: String,
        ctx: &Ctx<'_>,
    ) -> Result<Option<String>, MapError> {
        let mut value = Some(raw).filter(|s| !s.is_empty());
        for t in &f.transforms {
            let Some(v) = value else { break };
            value = t
                .apply(v, ctx)
                .map_err(|reason| MapError::BadValue {
                    mapping: self.origin.display().to_string(),
                    field: name.to_string(),
                    reason,
                })?
                .filter(|s| !s.is_empty());
        }
        Ok(value)
    }
}

/// The one value of a source that is not a path or a list of candidates.
fn single_value(source: &Source, ev: &VerifiedEvent) -> Option<String> {
    match source {
        Source::Header(h) => ev.header(h).map(str::to_string),
        Source::Query(q) => ev.query_param(q).map(str::to_string),
        Source::Constant(c) => Some(c.clone()),
        Source::Meta(Meta::EventType) => Some(ev.event_type().to_string()),
        Source::Meta(Meta::EventId) => Some(ev.event_id().to_string()),
        Source::Meta(Meta::Source) => Some(ev.source().to_string()),
        Source::Meta(Meta::ReceivedAt) => Some(ev.received_at().to_rfc3339()),
        Source::Path(_) | Source::FirstOf(_) => None,
    }
}

/// What a field tried, and for a path where in `payload` it stopped finding anything.
fn describe(f: &Field, payload: &Value) -> String {
    match &f.source {
        Source::Path(p) => {
            let found = p
                .select(payload)
                .into_iter()
                .filter(|h| !h.value.is_null())
                .count();
            let why = if found > 0 {
                // The path did select something: it was blank, or a transform emptied it
                // (a landing URL without the parameter `query_param` looks for).
                Some(if f.transforms.is_empty() {
                    format!("selected {found} value(s), all empty")
                } else {
                    format!("selected {found} value(s), none left non-empty by its transforms")
                })
            } else {
                why_nothing(p.as_str(), payload)
            };
            match why {
                Some(why) => format!("path `{}`: {why}", p.as_str()),
                None => format!("path `{}`", p.as_str()),
            }
        }
        Source::Header(h) => format!("header `{h}`"),
        Source::Query(q) => format!("query parameter `{q}`"),
        Source::Constant(c) => format!("constant `{c}`"),
        Source::Meta(m) => format!("meta `{m:?}`"),
        Source::FirstOf(c) => c
            .iter()
            .map(|f| describe(f, payload))
            .collect::<Vec<_>>()
            .join(", then "),
    }
}

/// For a path that selected nothing: follows its leading member names through `payload` and
/// says where they stop — a missing member, a value that is not an object, a null, or the
/// value in which the rest of the path (filter, index, wildcard) found nothing.
fn why_nothing(path: &str, payload: &Value) -> Option<String> {
    let names = crate::connector::prune::member_chain(path);
    let mut at = payload;
    let mut shown = String::from("$");
    for name in &names {
        match at {
            Value::Object(members) => match members.get(name) {
                Some(next) => at = next,
                None => return Some(format!("`{shown}` has no member `{name}`")),
            },
            Value::Null => return Some(format!("`{shown}` is null")),
            other => {
                return Some(format!(
                    "`{shown}` is {}, not an object with a member `{name}`",
                    with_article(type_name(other))
                ));
            }
        }
        shown.push('.');
        shown.push_str(name);
    }
    match at {
        Value::Null => Some(format!("`{shown}` is null")),
        _ if names.is_empty() => None,
        Value::Array(items) => Some(format!(
            "`{shown}` is an array of {} item(s); the rest of the path selects nothing in it",
            items.len()
        )),
        other => Some(format!(
            "`{shown}` is {}; the rest of the path selects nothing in it",
            with_article(type_name(other))
        )),
    }
}

/// "an array", "an object", "a string", …
fn with_article(kind: &str) -> String {
    match kind.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

fn parse_time(t: &str, fmt: &TimeFormat) -> Result<DateTime<Utc>, String> {
    let bad = || format!("`{t}` is not a time in the configured format");
    match fmt {
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(t.trim())
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| bad()),
        TimeFormat::Unix => {
            let n: i64 = t.trim().parse().map_err(|_| bad())?;
            Utc.timestamp_opt(n, 0).single().ok_or_else(bad)
        }
        TimeFormat::UnixMs => {
            let n: i64 = t.trim().parse().map_err(|_| bad())?;
            Utc.timestamp_millis_opt(n).single().ok_or_else(bad)
        }
        TimeFormat::Pattern(p) => NaiveDateTime::parse_from_str(t.trim(), p)
            .map(|n| n.and_utc())
            .map_err(|_| bad()),
    }
}

/// Every compiled mapping, grouped by connector.
#[derive(Debug, Default)]
pub struct MappingSet {
    by_connector: BTreeMap<String, Vec<Mapping>>,
}

impl MappingSet {
    /// Loads `dir/<connector>/*.toml`, collecting every error rather than the first.
    pub fn load_dir(dir: &Path) -> Result<MappingSet, Vec<ConfigError>> {
        let mut set = MappingSet::default();
        let mut errors = Vec::new();
        let read = |d: &Path| -> Result<Vec<PathBuf>, ConfigError> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(d)
                .map_err(|e| ConfigError::new(d, 0, format!("cannot read directory: {e}")))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            v.sort();
            Ok(v)
        };
        let dirs = read(dir).map_err(|e| vec![e])?;
        for sub in dirs.into_iter().filter(|p| p.is_dir()) {
            let Some(connector) = sub.file_name().and_then(|s| s.to_str()).map(str::to_string)
            else {
                continue;
            };
            let files = match read(&sub) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for f in files
                .into_iter()
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            {
                let name = f
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let loaded = std::fs::read_to_string(&f)
                    .map_err(|e| ConfigError::new(&f, 0, format!("cannot read: {e}")))
                    .and_then(|text| Mapping::from_toml(&connector, &name, &f, &text));
                match loaded {
                    Ok(m) => set.insert(m),
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    pub fn insert(&mut self, m: Mapping) {
        self.by_connector
            .entry(m.connector.clone())
            .or_default()
            .push(m);
    }

    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.by_connector.values().flatten()
    }

    /// Every JSONPath the mappings of `connector` evaluate: filters and field sources.
    pub fn json_paths(&self, connector: &str) -> Vec<&str> {
        let mut paths = Vec::new();
        for m in self.by_connector.get(connector).into_iter().flatten() {
            paths.extend(m.when.filter.as_ref().map(CompiledPath::as_str));
            let fields = [&m.event, &m.status]
                .into_iter()
                .chain(m.click_id.iter())
                .chain(m.transaction_id.iter())
                .chain(m.amount.iter())
                .chain(m.currency.iter())
                .chain(m.occurred_at.iter().map(|(f, _)| f))
                .chain(m.attributes.values());
            for field in fields {
                field.source.push_paths(&mut paths);
            }
        }
        paths
    }

    /// Connectors that have at least one mapping.
    pub fn connectors(&self) -> impl Iterator<Item = &str> {
        self.by_connector.keys().map(String::as_str)
    }

    /// [`Mapping::unfilled`] of every mapping that applies to `ev`.
    pub fn unfilled(&self, ev: &VerifiedEvent, currency: Option<&str>) -> Vec<String> {
        self.by_connector
            .get(ev.source())
            .into_iter()
            .flatten()
            .filter(|m| m.matches(ev))
            .flat_map(|m| m.unfilled(ev, currency))
            .collect()
    }

    /// Applies every matching mapping of the event's connector.
    pub fn map(&self, ev: &VerifiedEvent) -> Result<Vec<CanonicalPostback>, MapError> {
        let matching: Vec<&Mapping> = self
            .by_connector
            .get(ev.source())
            .into_iter()
            .flatten()
            .filter(|m| m.matches(ev))
            .collect();
        if matching.is_empty() {
            let filtered_out = self
                .by_connector
                .get(ev.source())
                .into_iter()
                .flatten()
                .filter(|m| m.matches_type(ev))
                .filter_map(|m| {
                    let filter = m.when.filter.as_ref()?;
                    Some(format!(
                        "{} (filter `{}`)",
                        m.origin.display(),
                        filter.as_str()
                    ))
                })
                .collect();
            return Err(MapError::UnmappedEvent {
                connector: ev.source().to_string(),
                event_type: ev.event_type().to_string(),
                filtered_out,
            });
        }
        matching.into_iter().map(|m| m.apply(ev)).collect()
    }
}

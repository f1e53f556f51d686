//! Settings: a TOML file, `${ENV}` interpolation, environment overrides, validated at load.
//!
//! Input: the path of a TOML file (`--config`, `POSTGATE_CONFIG`, default `postgate.toml`).
//! Output: [`Settings`], every value checked (currencies, URLs, amounts, references between
//! offers, advertisers and goals), or a [`ConfigError`] that names the file, the line or the
//! key, and the reason. Any string value may say `${NAME}` or `${NAME:-default}`; a missing
//! variable without a default is an error, never an empty string. `POSTGATE_LISTEN`,
//! `POSTGATE_DATABASE_URL` and `POSTGATE_ADMIN_TOKEN` override the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::{Currency, Money};

/// Why the configuration cannot be used. Start-up stops with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// `file:line: reason`, like connector and mapping files.
    #[error("{path}:{line}: {message}")]
    ParseAt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Everything `postgate serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub path: PathBuf,
    pub server: ServerSettings,
    pub network_currency: Currency,
    /// Units of the network currency per one unit of the keyed currency.
    pub fx_rates: HashMap<Currency, Decimal>,
    pub click_ids: ClickIdSettings,
    pub writer: WriterSettings,
    pub advertisers: Vec<AdvertiserSpec>,
    pub affiliates: Vec<AffiliateSpec>,
    pub offers: Vec<OfferSpec>,
    pub hooks: HooksSettings,
    pub outbound: OutboundSettings,
    pub spool: SpoolSettings,
}

/// The local spool that keeps verified requests while the database cannot be reached.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Off: a request the database cannot take is answered 503 `storage_unavailable`.
    pub enabled: bool,
    /// Segment files and `dead.log`; by default `spool/` beside the SQLite file.
    pub dir: PathBuf,
    /// How long after its arrival a request keeps being replayed before it is moved to
    /// `dead.log` (kept, reported, never deleted).
    pub give_up_after: std::time::Duration,
    /// Longest pause between replay attempts while the database is down.
    pub max_backoff: std::time::Duration,
}

/// Outbound postbacks: who gets them (compiled templates, validated at load) and how the
/// delivery worker behaves.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Affiliate key → its global postback and per-offer overrides (offer keys).
    pub postbacks: HashMap<String, crate::outbound::AffiliatePostbacks>,
    /// Networks the client may reach despite the SSRF policy (`outbound.allow_networks`
    /// plus `POSTGATE_OUTBOUND_ALLOW`).
    pub allow_networks: Vec<String>,
    pub schedule: crate::outbound::RetrySchedule,
    /// Concurrent attempts of the whole worker.
    pub concurrency: usize,
    /// Concurrent attempts per endpoint, so one slow affiliate cannot starve the rest.
    pub per_endpoint_concurrency: usize,
    pub connect_timeout: std::time::Duration,
    pub total_timeout: std::time::Duration,
    /// How often an idle worker looks for due attempts.
    pub poll_interval: std::time::Duration,
    /// Whether this process runs the delivery worker (enqueueing happens regardless).
    pub worker: bool,
    /// How long the queued job of a first attempt handed straight to this process's worker
    /// waits before apalis runs it as the fallback; `None` (`handoff_grace_ms = 0`): no
    /// handoff, every attempt goes through apalis' polling.
    pub handoff_grace: Option<std::time::Duration>,
}

/// Webhook sources: which connector files to load and whose conversions they report.
#[derive(Debug, Clone)]
pub struct HooksSettings {
    pub connectors_dir: PathBuf,
    pub mappings_dir: PathBuf,
    pub enabled: Vec<HookSpec>,
    /// Where `${VAR}`s in connector files get their values.
    pub env: crate::connector::Env,
}

/// One enabled webhook source.
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// `connectors/<connector>.toml`, served at `/hooks/<connector>`.
    pub connector: String,
    /// The advertiser whose offers and transactions this source reports on.
    pub advertiser: String,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub database_url: String,
    /// Bearer token for `/api/v1`; without one the admin API answers 401 to everyone.
    pub admin_token: Option<String>,
    /// Header carrying the visitor's address when behind a trusted proxy (e.g. `x-forwarded-for`);
    /// of a comma-separated list the last entry, the one the proxy appended, is used.
    pub client_ip_header: Option<String>,
    pub max_body_bytes: usize,
    /// How long a client has to send a request's line and headers; also how long an idle
    /// kept-alive connection stays open (`header_timeout_secs`, default 75).
    pub header_timeout: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct ClickIdSettings {
    /// Key id used for new click IDs; `None` with no keys = generate and persist one.
    pub active: Option<u8>,
    pub keys: Vec<(u8, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most work items committed in one transaction.
    pub max_batch: usize,
    /// PostgreSQL: writer tasks, each committing its own batches on its own connection
    /// (SQLite has exactly one writer).
    pub connections: u32,
}

#[derive(Debug, Clone)]
pub struct AdvertiserSpec {
    pub key: String,
    pub name: String,
    pub token: String,
    pub allow_networks: Vec<IpNet>,
    /// Canonical parameter name -> extra names this advertiser sends it under.
    pub aliases: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct AffiliateSpec {
    pub key: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferStatus {
    Active,
    Paused,
}

impl OfferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "paused" => Some(Self::Paused),
            _ => None,
        }
    }
}

/// What to do with a conversion that came faster after its click than the offer allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagAction {
    Reject,
    Flag,
}

impl LagAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Flag => "flag",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reject" => Some(Self::Reject),
            "flag" => Some(Self::Flag),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OfferSpec {
    pub key: String,
    pub name: String,
    pub advertiser: String,
    pub landing_url: String,
    pub fallback_url: Option<String>,
    pub status: OfferStatus,
    pub currency: Currency,
    pub default_goal: String,
    pub min_lag_seconds: i64,
    pub lag_action: LagAction,
    pub window_seconds: i64,
    pub goals: Vec<GoalSpec>,
}

/// How a payout or revenue is computed from a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountRule {
    /// A fixed amount in the offer's currency.
    Fixed(Money),
    /// A percentage of the conversion amount (revshare).
    Percent(Decimal),
}

impl AmountRule {
    /// `("fixed", "15.00")` / `("percent", "12.5")`, as stored in the database.
    pub fn to_parts(self) -> (&'static str, String) {
        match self {
            Self::Fixed(m) => ("fixed", m.to_decimal().to_string()),
            Self::Percent(p) => ("percent", p.to_string()),
        }
    }

    pub fn from_parts(kind: &str, value: &str, currency: Currency) -> Result<Self, String> {
        match kind {
            "fixed" => Money::parse(value, currency)
                .map(Self::Fixed)
                .map_err(|e| e.to_string()),
            "percent" => {
                let p = Decimal::from_str(value.trim())
                    .map_err(|_| format!("percent {value:?} is not a decimal"))?;
                if p.is_sign_negative() || p > Decimal::from(1000) {
                    return Err(format!("percent {value} must be between 0 and 1000"));
                }
                Ok(Self::Percent(p))
            }
            other => Err(format!("unknown rule {other:?}; use fixed or percent")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GoalSpec {
    pub name: String,
    pub payout: AmountRule,
    pub revenue: AmountRule,
    pub allow_repeats: bool,
}

/// Canonical postback parameter names an advertiser may alias.
pub const POSTBACK_PARAMS: &[&str] = &[
    "click_id",
    "payout",
    "currency",
    "transaction_id",
    "goal",
    "status",
    "token",
];

// ---- the file as written -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    fx: BTreeMap<String, String>,
    #[serde(default)]
    click_ids: RawClickIds,
    #[serde(default)]
    writer: RawWriter,
    #[serde(default)]
    advertisers: Vec<RawAdvertiser>,
    #[serde(default)]
    affiliates: Vec<RawAffiliate>,
    #[serde(default)]
    offers: Vec<RawOffer>,
    #[serde(default)]
    hooks: Vec<RawHook>,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    outbound: RawOutbound,
    #[serde(default)]
    spool: RawSpool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    enabled: Option<bool>,
    dir: Option<String>,
    give_up_after_hours: Option<u64>,
    max_backoff_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    #[serde(default)]
    allow_networks: Vec<String>,
    /// Attempt start offsets in seconds from the first attempt (first must be 0).
    schedule_seconds: Option<Vec<u64>>,
    jitter: Option<f64>,
    concurrency: Option<usize>,
    per_endpoint_concurrency: Option<usize>,
    connect_timeout_ms: Option<u64>,
    total_timeout_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    worker: Option<bool>,
    handoff_grace_ms: Option<u64>,
}

/// One postback destination as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostback {
    url: String,
    /// "get" (default: the URL is a template) or "post" (JSON body, Standard Webhooks).
    method: Option<String>,
    /// POST body template (JSON with `{token}` strings); default: the canonical body.
    body: Option<String>,
    /// `whsec_` secrets; two during a rotation.
    #[serde(default)]
    secrets: Vec<String>,
    goals: Option<Vec<String>>,
    statuses: Option<Vec<String>>,
    #[serde(default)]
    allow_http: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOfferPostback {
    affiliate: String,
    #[serde(flatten)]
    postback: RawPostback,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    connectors: Option<String>,
    mappings: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    connector: String,
    advertiser: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    database_url: Option<String>,
    admin_token: Option<String>,
    client_ip_header: Option<String>,
    max_body_bytes: Option<usize>,
    header_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    currency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClickIds {
    active: Option<u8>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: u8,
    /// Base64 (standard or URL-safe) of at least 32 random bytes.
    secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWriter {
    max_batch: Option<usize>,
    connections: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdvertiser {
    id: String,
    name: Option<String>,
    token: String,
    #[serde(default)]
    allow_ips: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAffiliate {
    id: String,
    name: Option<String>,
    /// Shorthand for a GET postback on every goal and status.
    postback_url: Option<String>,
    /// Lets `postback_url` use plain http (demo and self-hosted receivers).
    #[serde(default)]
    postback_allow_http: bool,
    postback: Option<RawPostback>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffer {
    id: String,
    name: Option<String>,
    advertiser: String,
    landing_url: String,
    fallback_url: Option<String>,
    status: Option<String>,
    currency: Option<String>,
    default_goal: Option<String>,
    #[serde(default)]
    min_lag_seconds: i64,
    lag_action: Option<String>,
    conversion_window_days: Option<i64>,
    #[serde(default)]
    goals: Vec<RawGoal>,
    /// Per-affiliate overrides of the affiliate's global postback for this offer.
    #[serde(default)]
    postbacks: Vec<RawOfferPostback>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoal {
    name: String,
    payout: BTreeMap<String, String>,
    revenue: BTreeMap<String, String>,
    #[serde(default)]
    allow_repeats: bool,
}

/// Tokens an offer's landing or fallback URL may contain.
pub const LANDING_TOKENS: &[&str] = &[
    "click_id",
    "offer_id",
    "affiliate_id",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
];

impl Settings {
    /// Reads, interpolates, overrides from the environment and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text, &|name| std::env::var(name).ok())
    }

    /// Like [`Settings::load`] but with the text and the environment given, for tests.
    pub fn from_toml(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        // toml's Display quotes the offending source line, which may hold a token: the
        // message says where and what, never the text.
        let toml_err = |e: toml::de::Error| {
            let message = e.message().trim_end();
            match e.span() {
                Some(span) => ConfigError::ParseAt {
                    path: path.to_owned(),
                    line: crate::connector::error::line_of(text, span.start),
                    message: message.to_owned(),
                },
                None => parse_err(message.to_owned()),
            }
        };
        // First pass on the text as written, for errors with line numbers.
        toml::from_str::<RawFile>(text).map_err(toml_err)?;
        // Second pass after interpolating every string value.
        let mut table: toml::Table = toml::from_str(text).map_err(toml_err)?;
        for (key, value) in table.iter_mut() {
            interpolate(key, value, env).map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        }
        let raw: RawFile = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        validate(path, raw, env)
    }
}

fn interpolate(
    key: &str,
    value: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) => {
            *s = expand(s, env).map_err(|m| (key.to_owned(), m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(&format!("{key}[{i}]"), item, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                interpolate(&format!("{key}.{k}"), v, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            // Braces nest, so a default may itself hold `{token}`s (postback templates).
            let mut depth = 0usize;
            let end = body
                .char_indices()
                .find(|&(_, c)| match c {
                    '{' => {
                        depth += 1;
                        false
                    }
                    '}' if depth == 0 => true,
                    '}' => {
                        depth -= 1;
                        false
                    }
                    _ => false,
                })
                .map(|(i, _)| i)
                .ok_or_else(|| "unclosed ${ in the value".to_owned())?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid variable name {name:?}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn validate(
    path: &Path,
    raw: RawFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };

    let listen_text = env("POSTGATE_LISTEN")
        .or(raw.server.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listen = SocketAddr::from_str(&listen_text).map_err(|e| {
        invalid(
            "server.listen".into(),
            format!("{listen_text:?} is not host:port: {e}"),
        )
    })?;
    let database_url = env("POSTGATE_DATABASE_URL")
        .or(raw.server.database_url)
        .unwrap_or_else(|| "sqlite://data/postgate.db".to_owned());
    if crate::store::backend_of(&database_url).is_err() {
        return Err(invalid(
            "server.database_url".into(),
            format!(
                "scheme {:?} (the URL is not shown: it may hold a password): use sqlite:<path> (embedded) or postgres://user@host/db",
                crate::store::scheme_of(&database_url)
            ),
        ));
    }
    let admin_token = env("POSTGATE_ADMIN_TOKEN")
        .or(raw.server.admin_token)
        .filter(|t| !t.is_empty());
    if let Some(t) = &admin_token
        && t.len() < 12
    {
        return Err(invalid(
            "server.admin_token".into(),
            "must be at least 12 characters".into(),
        ));
    }
    let server = ServerSettings {
        listen,
        database_url,
        admin_token,
        client_ip_header: raw.server.client_ip_header.map(|h| h.to_ascii_lowercase()),
        max_body_bytes: raw.server.max_body_bytes.unwrap_or(1024 * 1024),
        header_timeout: std::time::Duration::from_secs(
            raw.server.header_timeout_secs.unwrap_or(75).max(1),
        ),
    };

    let network_code = raw.network.currency.unwrap_or_else(|| "USD".to_owned());
    let network_currency = Currency::parse(&network_code)
        .map_err(|e| invalid("network.currency".into(), e.to_string()))?;

    let mut fx_rates = HashMap::new();
    fx_rates.insert(network_currency, Decimal::ONE);
    for (code, rate) in raw.fx {
        let key = format!("fx.{code}");
        let currency = Currency::parse(&code).map_err(|e| invalid(key.clone(), e.to_string()))?;
        let rate = Decimal::from_str(rate.trim())
            .ok()
            .filter(|r| r.is_sign_positive() && !r.is_zero())
            .ok_or_else(|| invalid(key.clone(), format!("{rate:?} is not a positive decimal")))?;
        if currency == network_currency && rate != Decimal::ONE {
            return Err(invalid(key, "the network currency's rate is 1".into()));
        }
        fx_rates.insert(currency, rate);
    }

    let mut keys = Vec::new();
    for (i, k) in raw.click_ids.keys.iter().enumerate() {
        let secret = decode_base64(k.secret.trim()).ok_or_else(|| {
            invalid(
                format!("click_ids.keys[{i}].secret"),
                "must be base64 (generate one with `openssl rand -base64 32`)".into(),
            )
        })?;
        if secret.len() < crate::domain::click_id::MIN_KEY_LEN {
            return Err(invalid(
                format!("click_ids.keys[{i}].secret"),
                format!(
                    "{} bytes; at least {} are required",
                    secret.len(),
                    crate::domain::click_id::MIN_KEY_LEN
                ),
            ));
        }
        keys.push((k.id, secret));
    }
    let active = match (raw.click_ids.active, keys.as_slice()) {
        (Some(a), _) if keys.iter().any(|(id, _)| *id == a) => Some(a),
        (Some(a), []) => {
            return Err(invalid(
                "click_ids.active".into(),
                format!("key {a} is not declared"),
            ));
        }
        (Some(a), _) => {
            return Err(invalid(
                "click_ids.active".into(),
                format!("key {a} is not among click_ids.keys"),
            ));
        }
        (None, [only]) => Some(only.0),
        (None, []) => None,
        (None, _) => {
            return Err(invalid(
                "click_ids.active".into(),
                "several keys are declared; name the active one".into(),
            ));
        }
    };

    let max_batch = raw.writer.max_batch.unwrap_or(512);
    if !(1..=10_000).contains(&max_batch) {
        return Err(invalid(
            "writer.max_batch".into(),
            "must be between 1 and 10000".into(),
        ));
    }
    let writer_connections = raw.writer.connections.unwrap_or(4);
    if !(1..=64).contains(&writer_connections) {
        return Err(invalid(
            "writer.connections".into(),
            "must be between 1 and 64".into(),
        ));
    }

    let mut advertisers = Vec::new();
    let mut seen = HashSet::new();
    let mut tokens = HashSet::new();
    for (i, a) in raw.advertisers.into_iter().enumerate() {
        let key = format!("advertisers[{i}]");
        check_key(&a.id).map_err(|m| invalid(format!("{key}.id"), m))?;
        if !seen.insert(a.id.clone()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("duplicate id {:?}", a.id),
            ));
        }
        if a.token.len() < 8 {
            return Err(invalid(
                format!("{key}.token"),
                "must be at least 8 characters".into(),
            ));
        }
        if !tokens.insert(a.token.clone()) {
            return Err(invalid(
                format!("{key}.token"),
                "another advertiser already uses this token".into(),
            ));
        }
        let mut allow_networks = Vec::new();
        for (j, net) in a.allow_ips.iter().enumerate() {
            allow_networks.push(parse_network(net).ok_or_else(|| {
                invalid(
                    format!("{key}.allow_ips[{j}]"),
                    format!("{net:?} is not an IP address or CIDR network"),
                )
            })?);
        }
        for (param, names) in &a.aliases {
            if !POSTBACK_PARAMS.contains(&param.as_str()) {
                return Err(invalid(
                    format!("{key}.aliases.{param}"),
                    format!("unknown parameter; one of {}", POSTBACK_PARAMS.join(", ")),
                ));
            }
            if names.iter().any(|n| n.is_empty()) {
                return Err(invalid(
                    format!("{key}.aliases.{param}"),
                    "empty alias".into(),
                ));
            }
        }
        advertisers.push(AdvertiserSpec {
            name: a.name.unwrap_or_else(|| a.id.clone()),
            key: a.id,
            token: a.token,
            allow_networks,
            aliases: a.aliases,
        });
    }

    let mut affiliates = Vec::new();
    let mut postbacks: HashMap<String, crate::outbound::AffiliatePostbacks> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, a) in raw.affiliates.into_iter().enumerate() {
        let global = match (a.postback_url, a.postback) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("affiliates[{i}].postback"),
                    "write postback_url or a [postback] table, not both".into(),
                ));
            }
            (Some(url), None) => Some(RawPostback {
                url,
                method: None,
                body: None,
                secrets: Vec::new(),
                goals: None,
                statuses: None,
                allow_http: a.postback_allow_http,
            }),
            (None, p) => p,
        };
        if let Some(p) = global {
            let rule = compile_postback(&format!("aff:{}", a.id), p)
                .map_err(|m| invalid(format!("affiliates[{i}].postback"), m))?;
            postbacks.entry(a.id.clone()).or_default().global = Some(rule);
        }
        check_key(&a.id).map_err(|m| invalid(format!("affiliates[{i}].id"), m))?;
        if !seen.insert(a.id.clone()) {
            return Err(invalid(
                format!("affiliates[{i}].id"),
                format!("duplicate id {:?}", a.id),
            ));
        }
        affiliates.push(AffiliateSpec {
            name: a.name.unwrap_or_else(|| a.id.clone()),
            key: a.id,
        });
    }
    let seen_affiliates = seen;

    let mut offers = Vec::new();
    let mut seen = HashSet::new();
    for (i, o) in raw.offers.into_iter().enumerate() {
        let key = format!("offers[{i}]");
        check_key(&o.id).map_err(|m| invalid(format!("{key}.id"), m))?;
        if !seen.insert(o.id.clone()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("duplicate id {:?}", o.id),
            ));
        }
        if !advertisers.iter().any(|a| a.key == o.advertiser) {
            return Err(invalid(
                format!("{key}.advertiser"),
                format!("no advertiser {:?} is declared", o.advertiser),
            ));
        }
        check_landing_url(&o.landing_url).map_err(|m| invalid(format!("{key}.landing_url"), m))?;
        if let Some(f) = &o.fallback_url {
            check_landing_url(f).map_err(|m| invalid(format!("{key}.fallback_url"), m))?;
        }
        let status = match o.status.as_deref() {
            None => OfferStatus::Active,
            Some(s) => OfferStatus::parse(s).ok_or_else(|| {
                invalid(
                    format!("{key}.status"),
                    format!("{s:?}: use active or paused"),
                )
            })?,
        };
        let currency = match o.currency.as_deref() {
            None => network_currency,
            Some(c) => {
                Currency::parse(c).map_err(|e| invalid(format!("{key}.currency"), e.to_string()))?
            }
        };
        if !fx_rates.contains_key(&currency) {
            return Err(invalid(
                format!("{key}.currency"),
                format!("no fx rate for {currency} into {network_currency}"),
            ));
        }
        let lag_action = match o.lag_action.as_deref() {
            None => LagAction::Reject,
            Some(s) => LagAction::parse(s).ok_or_else(|| {
                invalid(
                    format!("{key}.lag_action"),
                    format!("{s:?}: use reject or flag"),
                )
            })?,
        };
        if o.min_lag_seconds < 0 {
            return Err(invalid(
                format!("{key}.min_lag_seconds"),
                "must not be negative".into(),
            ));
        }
        let window_days = o.conversion_window_days.unwrap_or(30);
        if !(1..=3650).contains(&window_days) {
            return Err(invalid(
                format!("{key}.conversion_window_days"),
                "must be between 1 and 3650".into(),
            ));
        }
        if o.goals.is_empty() {
            return Err(invalid(
                format!("{key}.goals"),
                "an offer needs at least one goal".into(),
            ));
        }
        let mut goals = Vec::new();
        let mut goal_names = HashSet::new();
        for (j, g) in o.goals.into_iter().enumerate() {
            let gkey = format!("{key}.goals[{j}]");
            check_key(&g.name).map_err(|m| invalid(format!("{gkey}.name"), m))?;
            if !goal_names.insert(g.name.clone()) {
                return Err(invalid(
                    format!("{gkey}.name"),
                    format!("duplicate goal {:?}", g.name),
                ));
            }
            // A fixed amount is converted into the network currency with every conversion:
            // one too large once converted would refuse them all, so it is refused here.
            let converted = |rule: AmountRule| match rule {
                AmountRule::Fixed(m) => fx_rates.get(&m.currency).map_or(Ok(rule), |rate| {
                    m.convert(network_currency, *rate)
                        .map(|_| rule)
                        .map_err(|e| format!("{e} once converted into {network_currency}"))
                }),
                AmountRule::Percent(_) => Ok(rule),
            };
            let payout = rule(&g.payout, currency)
                .and_then(converted)
                .map_err(|m| invalid(format!("{gkey}.payout"), m))?;
            let revenue = rule(&g.revenue, currency)
                .and_then(converted)
                .map_err(|m| invalid(format!("{gkey}.revenue"), m))?;
            goals.push(GoalSpec {
                name: g.name,
                payout,
                revenue,
                allow_repeats: g.allow_repeats,
            });
        }
        let default_goal = o.default_goal.unwrap_or_else(|| goals[0].name.clone());
        if !goals.iter().any(|g| g.name == default_goal) {
            return Err(invalid(
                format!("{key}.default_goal"),
                format!("{default_goal:?} is not one of the offer's goals"),
            ));
        }
        for (j, p) in o.postbacks.iter().enumerate() {
            let at = format!("{key}.postbacks[{j}]");
            if !seen_affiliates.contains(&p.affiliate) {
                return Err(invalid(
                    format!("{at}.affiliate"),
                    format!("no affiliate {:?}", p.affiliate),
                ));
            }
            let rule = compile_postback(
                &format!("aff:{}:offer:{}", p.affiliate, o.id),
                p.postback.clone(),
            )
            .map_err(|m| invalid(at, m))?;
            postbacks
                .entry(p.affiliate.clone())
                .or_default()
                .offer_overrides
                .insert(o.id.clone(), rule);
        }
        offers.push(OfferSpec {
            name: o.name.unwrap_or_else(|| o.id.clone()),
            key: o.id,
            advertiser: o.advertiser,
            landing_url: o.landing_url,
            fallback_url: o.fallback_url,
            status,
            currency,
            default_goal,
            min_lag_seconds: o.min_lag_seconds,
            lag_action,
            window_seconds: window_days * 86_400,
            goals,
        });
    }

    let mut enabled: Vec<HookSpec> = Vec::new();
    for (i, h) in raw.hooks.into_iter().enumerate() {
        if !advertisers.iter().any(|a| a.key == h.advertiser) {
            return Err(invalid(
                format!("hooks[{i}].advertiser"),
                format!("no advertiser {:?} is declared", h.advertiser),
            ));
        }
        if enabled.iter().any(|e| e.connector == h.connector) {
            return Err(invalid(
                format!("hooks[{i}].connector"),
                format!("connector {:?} is enabled twice", h.connector),
            ));
        }
        enabled.push(HookSpec {
            connector: h.connector,
            advertiser: h.advertiser,
        });
    }
    let o = raw.outbound;
    let mut allow_networks = o.allow_networks;
    if let Some(extra) = env(crate::delivery::ALLOW_ENV) {
        allow_networks.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    crate::delivery::AllowList::parse(allow_networks.iter().map(String::as_str))
        .map_err(|e| invalid("outbound.allow_networks".into(), e.to_string()))?;
    let standard = crate::outbound::RetrySchedule::standard();
    let schedule = match (o.schedule_seconds, o.jitter) {
        (None, None) => standard,
        (offsets, jitter) => crate::outbound::RetrySchedule::new(
            offsets.map_or_else(
                || standard.offsets().to_vec(),
                |v| v.into_iter().map(std::time::Duration::from_secs).collect(),
            ),
            jitter.unwrap_or(0.2),
        )
        .map_err(|e| invalid("outbound.schedule_seconds".into(), e.to_string()))?,
    };
    let positive = |key: &str, v: usize| {
        if v == 0 {
            Err(invalid(
                format!("outbound.{key}"),
                "must be at least 1".into(),
            ))
        } else {
            Ok(v)
        }
    };
    let ms = std::time::Duration::from_millis;
    let outbound = OutboundSettings {
        postbacks,
        allow_networks,
        schedule,
        concurrency: positive("concurrency", o.concurrency.unwrap_or(256))?,
        per_endpoint_concurrency: positive(
            "per_endpoint_concurrency",
            o.per_endpoint_concurrency.unwrap_or(8),
        )?,
        connect_timeout: ms(o.connect_timeout_ms.unwrap_or(5_000)),
        total_timeout: ms(o.total_timeout_ms.unwrap_or(15_000)),
        poll_interval: ms(o.poll_interval_ms.unwrap_or(200).max(10)),
        worker: o.worker.unwrap_or(true),
        handoff_grace: match o.handoff_grace_ms.unwrap_or(60_000) {
            0 => None,
            grace => Some(ms(grace)),
        },
    };
    let hooks = HooksSettings {
        connectors_dir: PathBuf::from(raw.paths.connectors.unwrap_or_else(|| "connectors".into())),
        mappings_dir: PathBuf::from(raw.paths.mappings.unwrap_or_else(|| "mappings".into())),
        enabled,
        env: crate::connector::Env::Process,
    };

    let spool = spool_settings(raw.spool, &server.database_url)
        .map_err(|(key, message)| invalid(format!("spool.{key}"), message))?;

    Ok(Settings {
        path: path.to_owned(),
        spool,
        server,
        network_currency,
        fx_rates,
        click_ids: ClickIdSettings { active, keys },
        writer: WriterSettings {
            max_batch,
            connections: writer_connections,
        },
        advertisers,
        affiliates,
        offers,
        hooks,
        outbound,
    })
}

fn spool_settings(raw: RawSpool, database_url: &str) -> Result<SpoolSettings, (String, String)> {
    let hours = raw.give_up_after_hours.unwrap_or(72);
    if !(1..=24 * 365).contains(&hours) {
        return Err((
            "give_up_after_hours".into(),
            "must be between 1 and 8760".into(),
        ));
    }
    let backoff = raw.max_backoff_seconds.unwrap_or(10);
    if !(1..=3600).contains(&backoff) {
        return Err((
            "max_backoff_seconds".into(),
            "must be between 1 and 3600".into(),
        ));
    }
    let dir = match raw.dir.filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => default_spool_dir(database_url),
    };
    Ok(SpoolSettings {
        enabled: raw.enabled.unwrap_or(true),
        dir,
        give_up_after: std::time::Duration::from_secs(hours * 3600),
        max_backoff: std::time::Duration::from_secs(backoff),
    })
}

/// `spool/` beside the SQLite file (same disk, same backups), else `./data/spool`.
fn default_spool_dir(database_url: &str) -> PathBuf {
    let file = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default())
        .filter(|f| !f.is_empty() && !f.starts_with(':'));
    match file.and_then(|f| Path::new(f).parent()) {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join("spool"),
        Some(_) => PathBuf::from("spool"),
        None => PathBuf::from("data/spool"),
    }
}

/// Compiles one postback destination; unknown tokens and bad secrets are errors here.
fn compile_postback(id: &str, p: RawPostback) -> Result<crate::outbound::PostbackRule, String> {
    use crate::outbound::{Endpoint, SigningKeys};
    let statuses = match p.statuses {
        Some(list) => {
            for s in &list {
                if crate::domain::Status::parse(s).is_none() {
                    return Err(format!(
                        "unknown status {s:?}; one of pending, approved, rejected, reversed"
                    ));
                }
            }
            Some(list.into_iter().collect())
        }
        None => None,
    };
    let endpoint = match p.method.as_deref().unwrap_or("get") {
        "get" => {
            if p.body.is_some() || !p.secrets.is_empty() {
                return Err("body and secrets need method = \"post\"".into());
            }
            Endpoint::get(id, &p.url, p.allow_http)
        }
        "post" => {
            // POST postbacks are signed per Standard Webhooks, so the receiver can tell
            // them from forgeries: an endpoint without a key is a mistake, not a choice.
            if p.secrets.is_empty() {
                return Err(
                    "method = \"post\" needs secrets = [\"whsec_…\"] (POST postbacks are signed per Standard Webhooks)"
                        .into(),
                );
            }
            let signing = SigningKeys::parse(p.secrets.iter().map(String::as_str))
                .map_err(|e| e.to_string())?;
            Endpoint::post(id, &p.url, p.body.as_deref(), Some(signing), p.allow_http)
        }
        other => return Err(format!("method {other:?}: one of get, post")),
    }
    .map_err(|e| crate::store::writer::error_chain(&e))?;
    Ok(crate::outbound::PostbackRule {
        endpoint,
        goals: p.goals.map(|g| g.into_iter().collect()),
        statuses,
    })
}

fn rule(table: &BTreeMap<String, String>, currency: Currency) -> Result<AmountRule, String> {
    let mut entries = table.iter();
    match (entries.next(), entries.next()) {
        (Some((kind, value)), None) => AmountRule::from_parts(kind, value, currency),
        _ => Err(r#"write exactly one of { fixed = "15.00" } or { percent = "100" }"#.into()),
    }
}

/// Ids appear in URLs (`/c/{offer}`, `?aff=`): keep them to a safe alphabet.
fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?}: 1-64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Landing URLs are absolute http(s) URLs whose `{tokens}` are all known.
pub fn check_landing_url(template: &str) -> Result<(), String> {
    let mut probe = template.to_owned();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let token = &after[..end];
        if !LANDING_TOKENS.contains(&token) {
            return Err(format!(
                "unknown token {{{token}}}; known: {}",
                LANDING_TOKENS
                    .iter()
                    .map(|t| format!("{{{t}}}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        probe = probe.replace(&format!("{{{token}}}"), "x");
        rest = &after[end + 1..];
    }
    let url = url::Url::parse(&probe).map_err(|e| format!("{template:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{template:?} must be an absolute http(s) URL"));
    }
    Ok(())
}

fn parse_network(text: &str) -> Option<IpNet> {
    let t = text.trim();
    IpNet::from_str(t)
        .ok()
        .or_else(|| IpAddr::from_str(t).ok().map(IpNet::from))
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn variables_expand_with_defaults_and_missing_ones_are_errors() {
        let env = env_of(&[("A", "1"), ("EMPTY", "")]);
        assert_eq!(expand("x${A}y", &env).as_deref(), Ok("x1y"));
        assert_eq!(expand("${B:-dflt}", &env).as_deref(), Ok("dflt"));
        assert_eq!(expand("${EMPTY:-d}", &env).as_deref(), Ok("d"));
        assert_eq!(expand("$$5 and $x", &env).as_deref(), Ok("$5 and $x"));
        assert!(
            expand("${B}", &env)
                .expect_err("must fail")
                .contains("B is not set")
        );
        assert!(expand("${A", &env).is_err());
    }

    #[test]
    fn the_shipped_demo_config_is_valid() {
        let text = include_str!("../postgate.toml");
        let settings = Settings::from_toml(Path::new("postgate.toml"), text, &|_| None)
            .expect("demo config is valid");
        assert_eq!(settings.offers[0].key, "demo");
        assert_eq!(settings.offers[0].min_lag_seconds, 1);
        assert_eq!(settings.offers[0].window_seconds, 30 * 86_400);
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            settings.server.header_timeout,
            std::time::Duration::from_secs(75),
            "the default, above common load balancers' idle timeouts"
        );
        // A fixed amount at the limit in its own currency but past it in the network's.
        let eur = text.replace("currency = \"USD\"\n", "currency = \"EUR\"\n");
        let eur = eur.replacen(
            "currency = \"EUR\"",
            "currency = \"USD\"",
            1, // the network currency stays USD; the offer's becomes EUR
        );
        let at_limit = eur.replace("fixed = \"15.00\"", "fixed = \"100000000000.00\"");
        let err = Settings::from_toml(Path::new("postgate.toml"), &at_limit, &|_| None)
            .expect_err("too large once converted");
        assert!(
            err.to_string().contains("payout") && err.to_string().contains("too large"),
            "{err}"
        );
        let fits = eur.replace("fixed = \"15.00\"", "fixed = \"90000000000.00\"");
        Settings::from_toml(Path::new("postgate.toml"), &fits, &|_| None)
            .expect("fits once converted");
        let with_five = text.replace("# header_timeout_secs = 75", "header_timeout_secs = 5");
        let five = Settings::from_toml(Path::new("postgate.toml"), &with_five, &|_| None)
            .expect("with a header timeout");
        assert_eq!(
            five.server.header_timeout,
            std::time::Duration::from_secs(5)
        );

        // The demo affiliate's postback: the issue's default URL, or the environment's.
        let values = crate::outbound::PostbackValues {
            click_id: Some("c 1".into()),
            transaction_id: "T-1".into(),
            payout: "12.50".into(),
            currency: "EUR".into(),
            ..Default::default()
        };
        let url = |settings: &Settings| {
            let rule = settings.outbound.postbacks["demo"]
                .global
                .as_ref()
                .expect("a global postback");
            rule.endpoint
                .build_request("d-1", &values, 1_700_000_000)
                .expect("renders")
                .url
                .to_string()
        };
        assert_eq!(
            url(&settings),
            "https://affiliate.example/pb?click_id=c%201&payout=12.50&currency=EUR&txid=T-1"
        );
        let local = Settings::from_toml(Path::new("postgate.toml"), text, &|n| {
            (n == "POSTGATE_DEMO_POSTBACK_URL")
                .then(|| "http://127.0.0.1:9/pb?c={click_id}".to_owned())
        })
        .expect("demo config with a local receiver");
        assert_eq!(url(&local), "http://127.0.0.1:9/pb?c=c%201");
    }

    #[test]
    fn load_errors_say_where_but_never_echo_a_secret() {
        // A missing closing quote on a secret's line: toml's own message would quote it.
        let text = "[server]\nadmin_token = \"s3cr3t-admin-token\nlisten = \"127.0.0.1:0\"\n";
        let err = Settings::from_toml(Path::new("p.toml"), text, &|_| None)
            .expect_err("syntax error")
            .to_string();
        assert!(err.starts_with("p.toml:2: "), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");

        let text = "[server]\ndatabase_url = \"postgresql+asyncpg://u:pw-s3cr3t@db/x\"\n";
        let err = Settings::from_toml(Path::new("p.toml"), text, &|_| None)
            .expect_err("unsupported scheme")
            .to_string();
        assert!(err.contains("postgresql+asyncpg"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");

        let text = "[server]\nadmin_token = \"${TOKEN:-s3cr3t-default\"\n";
        let err = Settings::from_toml(Path::new("p.toml"), text, &|_| None)
            .expect_err("unclosed ${")
            .to_string();
        assert!(err.contains("unclosed"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn the_outbound_allow_list_takes_networks_from_the_environment_too() {
        let text = "[outbound]\nallow_networks = [\"10.0.0.0/8\"]\n";
        let s = Settings::from_toml(Path::new("p.toml"), text, &|n| {
            (n == crate::delivery::ALLOW_ENV).then(|| "127.0.0.1/32, ::1/128".to_owned())
        })
        .expect("valid");
        assert_eq!(
            s.outbound.allow_networks,
            ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
        );
        let err = Settings::from_toml(Path::new("p.toml"), text, &|n| {
            (n == crate::delivery::ALLOW_ENV).then(|| "127.0.0.1/33".to_owned())
        })
        .expect_err("a bad network in the environment fails the load")
        .to_string();
        assert!(err.contains("outbound.allow_networks"), "{err}");
    }

    #[test]
    fn the_spool_lives_beside_the_sqlite_file_unless_told_otherwise() {
        assert_eq!(
            default_spool_dir("sqlite://data/postgate.db?mode=rwc"),
            PathBuf::from("data/spool")
        );
        assert_eq!(
            default_spool_dir("sqlite:/var/lib/pg/p.db"),
            PathBuf::from("/var/lib/pg/spool")
        );
        assert_eq!(
            default_spool_dir("sqlite::memory:"),
            PathBuf::from("data/spool")
        );
        let text = "[spool]\ndir = \"/tmp/s\"\ngive_up_after_hours = 1\nmax_backoff_seconds = 2\n";
        let s = Settings::from_toml(Path::new("p.toml"), text, &|_| None).expect("valid");
        assert!(s.spool.enabled);
        assert_eq!(s.spool.dir, PathBuf::from("/tmp/s"));
        assert_eq!(s.spool.give_up_after.as_secs(), 3600);
        assert_eq!(s.spool.max_backoff.as_secs(), 2);
        let err = Settings::from_toml(
            Path::new("p.toml"),
            "[spool]\ngive_up_after_hours = 0\n",
            &|_| None,
        )
        .expect_err("zero hours")
        .to_string();
        assert!(err.contains("spool.give_up_after_hours"), "{err}");
    }

    #[test]
    fn unknown_fields_report_the_line() {
        let err = Settings::from_toml(Path::new("p.toml"), "[server]\nlisen = \"x\"\n", &|_| None)
            .expect_err("must fail")
            .to_string();
        assert!(err.starts_with("p.toml:2: "), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn postback_templates_are_compiled_at_load_and_defaults_may_hold_tokens() {
        let base = r#"
[[advertisers]]
id = "a"
token = "abcdefgh"
[[affiliates]]
id = "f"
postback_url = "${PB:-https://aff.example/pb?c={click_id}&p={payout}}"
[[offers]]
id = "o"
advertiser = "a"
landing_url = "https://x.example/?s={click_id}"
[[offers.goals]]
name = "g"
payout = { fixed = "1.00" }
revenue = { percent = "100" }
[[offers.postbacks]]
affiliate = "f"
url = "https://aff.example/o?c={click_id}"
statuses = ["approved"]
"#;
        let settings =
            Settings::from_toml(Path::new("p.toml"), base, &|_| None).expect("valid postbacks");
        let rules = &settings.outbound.postbacks["f"];
        assert_eq!(
            rules.global.as_ref().map(|r| r.endpoint.id.as_str()),
            Some("aff:f")
        );
        assert!(rules.select("o", "g", "approved").is_some());
        assert!(
            rules.select("o", "g", "pending").is_none(),
            "override, no fall-back"
        );
        let with_env = Settings::from_toml(Path::new("p.toml"), base, &|n| {
            (n == "PB").then(|| "https://env.example/x?c={click_id}".to_owned())
        })
        .expect("env URL");
        assert!(with_env.outbound.postbacks["f"].global.is_some());

        for (bad, key) in [
            (
                base.replace("&p={payout}", "&p={payot}"),
                "affiliates[0].postback",
            ),
            (
                base.replace("https://aff.example/pb", "http://aff.example/pb"),
                "affiliates[0].postback",
            ),
            (
                base.replace("affiliate = \"f\"", "affiliate = \"nobody\""),
                "offers[0].postbacks[0].affiliate",
            ),
            (
                base.replace("[\"approved\"]", "[\"paid\"]"),
                "offers[0].postbacks[0]",
            ),
            (
                base.replace(
                    "postback_url = \"${PB:-https://aff.example/pb?c={click_id}&p={payout}}\"",
                    "[affiliates.postback]\nmethod = \"post\"\nurl = \"https://aff.example/hook\"",
                ),
                "needs secrets",
            ),
        ] {
            let err = Settings::from_toml(Path::new("p.toml"), &bad, &|_| None)
                .expect_err("must fail")
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn references_and_values_are_checked() {
        let base = r#"
[[advertisers]]
id = "a"
token = "abcdefgh"
[[offers]]
id = "o"
advertiser = "ADV"
landing_url = "https://x.example/?s={click_id}"
[[offers.goals]]
name = "g"
payout = { fixed = "1.00" }
revenue = { percent = "100" }
"#;
        let err = Settings::from_toml(Path::new("p.toml"), base, &|_| None)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("offers[0].advertiser"), "{err}");
        let bad_token = base.replace("ADV", "a").replace("{click_id}", "{clickid}");
        let err = Settings::from_toml(Path::new("p.toml"), &bad_token, &|_| None)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("unknown token {clickid}"), "{err}");
        let bad_money = base.replace("ADV", "a").replace("1.00", "1.001");
        let err = Settings::from_toml(Path::new("p.toml"), &bad_money, &|_| None)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("goals[0].payout"), "{err}");
    }
}

//! Shared helpers for the integration tests: load the shipped connector files with fixed
//! variables, and build raw requests from fixture bytes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use postgate::connector::{Connector, Env, LoadOptions, RawRequest};

#[allow(dead_code)]
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[allow(dead_code)]
pub fn fixture(rel: &str) -> Bytes {
    let p = root().join("tests/fixtures").join(rel);
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

#[allow(dead_code)]
pub fn json_fixture(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[allow(dead_code)]
pub fn opts(vars: &[(&str, &str)], min_secret_bytes: usize) -> LoadOptions {
    let m: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LoadOptions {
        env: Env::Fixed(m),
        min_secret_bytes,
    }
}

/// Loads `connectors/<name>.toml` as shipped.
#[allow(dead_code)]
pub fn shipped(name: &str, vars: &[(&str, &str)], min_secret_bytes: usize) -> Connector {
    let p = root().join("connectors").join(format!("{name}.toml"));
    Connector::load(&p, &opts(vars, min_secret_bytes)).unwrap_or_else(|e| panic!("{e}"))
}

#[allow(dead_code)]
pub fn inline(
    text: &str,
    vars: &[(&str, &str)],
) -> Result<Connector, postgate::connector::ConfigError> {
    let o = opts(vars, 16);
    let t = postgate::connector::interpolate(Path::new("inline.toml"), text, &o.env)?;
    Connector::from_toml("inline", Path::new("inline.toml"), &t, &o)
}

#[allow(dead_code)]
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

#[allow(dead_code)]
pub fn req(
    method: &str,
    pq: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    now: DateTime<Utc>,
) -> RawRequest {
    RawRequest {
        method: method.to_string(),
        path_and_query: pq.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
        peer_ip: None,
        received_at: now,
    }
}

#[allow(dead_code)]
pub fn code<T: std::fmt::Debug>(r: Result<T, postgate::connector::VerifyError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    }
}

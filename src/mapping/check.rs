//! Offline runners shared by `postgate check`, `postgate map` and `cargo test`.
//!
//! * [`check`] compiles a connectors and a mappings directory (`[paths]`), then runs every
//!   `[[test]]` case of every mapping; each problem is a [`ConfigError`] (`file:line: reason`).
//! * [`map_payload`] turns one payload file into canonical postbacks without a signature
//!   check and without side effects.
//!
//! Both go through the same `Connector::parse_unverified` → `decode` → `MappingSet::map`
//! path as production minus authentication, so a passing case means the real request maps
//! the same way once it is verified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;

use super::{MapError, MappingSet};
use crate::connector::{
    self, ConfigError, Connector, DecodeError, LoadOptions, RawRequest, VerifyError,
};
use crate::domain::{CanonicalPostback, ReasonCode};

/// Any stage of an offline run failing.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("body: {0}")]
    Verify(#[from] VerifyError),
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("map: {0}")]
    Map(#[from] MapError),
}

impl DryRunError {
    pub fn code(&self) -> ReasonCode {
        match self {
            DryRunError::Verify(e) => e.code(),
            DryRunError::Decode(e) => e.code(),
            DryRunError::Map(e) => e.code(),
        }
    }
}

/// Reads a payload file of at most `limit` bytes (a connector's body limit): `/dev/zero` or a
/// huge file is refused after `limit + 1` bytes instead of exhausting memory.
pub fn read_payload(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut body = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if body.len() > limit {
        return Err(format!(
            "{}: larger than the connector's body limit of {limit} bytes",
            path.display()
        ));
    }
    Ok(body)
}

/// A test case's fixture, relative to the project root and inside it: no absolute path, no
/// `..` and no symlink out of it, so a mapping file cannot make `check` read (and print in a
/// failure) files elsewhere.
fn fixture_path(root: &Path, rel: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let path = Path::new(rel);
    if !path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "{rel:?} must be a path relative to the project root, without `..`"
        ));
    }
    let resolved = root
        .join(path)
        .canonicalize()
        .map_err(|e| format!("{rel:?}: {e}"))?;
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    if !resolved.starts_with(&root) {
        return Err(format!(
            "{rel:?} resolves outside the project root (a symlink?)"
        ));
    }
    Ok(resolved)
}

/// Parses `--header 'K: V'`.
pub fn parse_header_arg(arg: &str) -> Option<(String, String)> {
    let (k, v) = arg.split_once(':')?;
    let k = k.trim();
    (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
}

/// Maps one payload as if `connector` had received it, skipping authentication
/// (`postgate map <connector> <payload-file> --header 'K: V'`).
pub fn map_payload(
    connector: &Connector,
    mappings: &MappingSet,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<Vec<CanonicalPostback>, DryRunError> {
    let request = (method, path_and_query, headers, body);
    Ok(map_events(connector, mappings, request, false)?.0)
}

/// [`map_payload`], plus a note for every optional field a mapping defines that found
/// nothing ([`MappingSet::unfilled`]): for `postgate map`, not for test cases.
pub fn map_payload_explained(
    connector: &Connector,
    mappings: &MappingSet,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<(Vec<CanonicalPostback>, Vec<String>), DryRunError> {
    let request = (method, path_and_query, headers, body);
    map_events(connector, mappings, request, true)
}

/// The postbacks of every event the request decodes to and, with `explain`, the notes.
fn map_events(
    connector: &Connector,
    mappings: &MappingSet,
    (method, path_and_query, headers, body): (&str, &str, &[(String, String)], Bytes),
    explain: bool,
) -> Result<(Vec<CanonicalPostback>, Vec<String>), DryRunError> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for ev in decode_payload(connector, method, path_and_query, headers, body)? {
        let postbacks = mappings.map(&ev)?;
        if explain {
            let currency = postbacks.iter().find_map(|p| p.currency.as_deref());
            notes.extend(mappings.unfilled(&ev, currency));
        }
        out.extend(postbacks);
    }
    Ok((out, notes))
}

/// The events a payload decodes to, parsed as production parses it minus authentication.
fn decode_payload(
    connector: &Connector,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<Vec<crate::connector::VerifiedEvent>, DryRunError> {
    let req = RawRequest {
        method: method.to_string(),
        path_and_query: path_and_query.to_string(),
        headers: headers.to_vec(),
        body,
        peer_ip: None,
        received_at: Utc::now(),
    };
    Ok(connector.decode(connector.parse_unverified(&req)?)?)
}

/// Outcome of [`check`].
#[derive(Debug, Default)]
pub struct CheckReport {
    pub connectors: usize,
    pub mappings: usize,
    pub cases_run: usize,
    pub cases_passed: usize,
    /// Every problem found, as `file:line: reason`. Empty means all good.
    pub errors: Vec<ConfigError>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Where [`check`] looks: the connectors and mappings directories (`[paths]` in the
/// configuration) and the root that mapping test cases name their fixtures from. Relative
/// directories are taken from `root`.
pub struct Dirs<'a> {
    pub root: &'a Path,
    pub connectors: &'a Path,
    pub mappings: &'a Path,
}

impl<'a> Dirs<'a> {
    /// `root/connectors` and `root/mappings`, the layout of a project checkout.
    pub fn under(root: &'a Path) -> Self {
        Dirs {
            root,
            connectors: Path::new("connectors"),
            mappings: Path::new("mappings"),
        }
    }
}

/// Validates every `*.toml` connector and `**.toml` mapping in `dirs` and runs every mapping
/// test case (fixture paths are relative to `dirs.root`).
pub fn check(dirs: &Dirs<'_>, opts: &LoadOptions) -> CheckReport {
    let root = dirs.root;
    let connectors_dir = root.join(dirs.connectors);
    let mut report = CheckReport::default();
    let mut connectors: BTreeMap<String, Connector> =
        match connector::load_dir(&connectors_dir, opts) {
            Ok(c) => c,
            Err(e) => {
                report.errors.extend(e);
                BTreeMap::new()
            }
        };
    report.connectors = connectors.len();
    let mappings = match MappingSet::load_dir(&root.join(dirs.mappings)) {
        Ok(m) => m,
        Err(e) => {
            report.errors.extend(e);
            return report;
        }
    };
    report.mappings = mappings.mappings().count();
    // As in production, bodies are built only where some path reaches; every case also
    // runs on the whole body, and the two must agree.
    for (name, conn) in &mut connectors {
        conn.prune_to(mappings.json_paths(name));
    }
    let whole = connector::load_dir(&connectors_dir, opts).unwrap_or_default();
    for m in mappings.mappings() {
        let Some(conn) = connectors.get(m.connector()) else {
            if report.connectors > 0 {
                report.errors.push(ConfigError::new(
                    m.origin(),
                    0,
                    format!(
                        "no connector `{}` (expected {}/{}.toml)",
                        m.connector(),
                        dirs.connectors.display(),
                        m.connector()
                    ),
                ));
            }
            continue;
        };
        if m.tests().is_empty() {
            report.errors.push(ConfigError::new(
                m.origin(),
                0,
                "no [[test]] case: every mapping carries at least one (a fixture, its headers, \
                 and the postbacks it must become)",
            ));
        }
        for case in m.tests() {
            report.cases_run += 1;
            let whole = whole.get(m.connector()).filter(|_| conn.is_pruned());
            match run_case(root, conn, whole, &mappings, case) {
                Ok(()) => report.cases_passed += 1,
                Err(reason) => report
                    .errors
                    .push(ConfigError::new(m.origin(), case.line, reason)),
            }
        }
    }
    report
}

fn run_case(
    root: &Path,
    conn: &Connector,
    whole: Option<&Connector>,
    mappings: &MappingSet,
    case: &super::TestCase,
) -> Result<(), String> {
    let t = &case.spec;
    let label = t
        .name
        .clone()
        .or_else(|| t.fixture.clone())
        .unwrap_or_else(|| "unnamed".into());
    let body = match &t.fixture {
        Some(rel) => fixture_path(root, rel)
            .and_then(|fixture| read_payload(&fixture, conn.max_body_bytes()))
            .map_err(|e| format!("test `{label}`: cannot read fixture: {e}"))?,
        None => Vec::new(),
    };
    let headers: Vec<(String, String)> = t
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pq = t
        .path_and_query
        .clone()
        .unwrap_or_else(|| format!("/hooks/{}", conn.name()));
    let method = t.method.as_deref().unwrap_or("POST");
    let body = Bytes::from(body);
    let got = map_payload(conn, mappings, method, &pq, &headers, body.clone());
    if let Some(whole) = whole {
        let full = map_payload(whole, mappings, method, &pq, &headers, body);
        let (a, b) = (outcome_text(&got), outcome_text(&full));
        if a != b {
            return Err(format!(
                "test `{label}`: the pruned body maps differently from the whole one (a bug \
                 in postgate's pruned parse)\n  pruned: {a}\n  whole:  {b}"
            ));
        }
    }
    match (&t.expect_error, got) {
        (Some(code), Err(e)) if e.code().as_str() == code => Ok(()),
        (Some(code), Err(e)) => Err(format!(
            "test `{label}`: expected error `{code}`, got `{}`: {e}",
            e.code()
        )),
        (Some(code), Ok(pbs)) => Err(format!(
            "test `{label}`: expected error `{code}`, got {} postback(s)",
            pbs.len()
        )),
        (None, Err(e)) => Err(format!("test `{label}`: {} ({})", e, e.code())),
        (None, Ok(pbs)) if pbs == t.expect => Ok(()),
        (None, Ok(pbs)) => Err(format!(
            "test `{label}`: postbacks differ\n  expected: {}\n  got:      {}",
            serde_json::to_string(&t.expect).unwrap_or_default(),
            serde_json::to_string(&pbs).unwrap_or_default()
        )),
    }
}

/// A dry run's result as comparable text.
fn outcome_text(r: &Result<Vec<CanonicalPostback>, DryRunError>) -> String {
    match r {
        Ok(pbs) => serde_json::to_string(pbs).unwrap_or_default(),
        Err(e) => format!("error {}: {e}", e.code()),
    }
}

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::drain::{self, Replay, ReplayError};
use super::journal::{Journal, Tail, frame, scan};
use super::*;
use crate::domain::Status;

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        enabled: true,
        dir: dir.to_owned(),
        give_up_after: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(2),
    }
}

fn postback(n: u32) -> SpooledRequest {
    SpooledRequest::Postback {
        advertiser: "acme".into(),
        postback: CanonicalPostback {
            source: "postback".into(),
            source_event_id: None,
            event: Some("purchase".into()),
            click_id: Some(format!("click-{n}")),
            transaction_id: Some(format!("T{n}")),
            status: Status::Approved,
            amount: Some("12.50".parse().expect("decimal")),
            currency: Some("EUR".into()),
            occurred_at: None,
            attributes: Default::default(),
        },
    }
}

fn entry(n: u32, received_at: DateTime<Utc>) -> Entry {
    Entry {
        id: format!("id-{n}"),
        received_at,
        request: postback(n),
    }
}

fn ids(journal: &Journal) -> Vec<String> {
    journal
        .pending
        .values()
        .map(|p| p.entry.id.clone())
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn frames_round_trip_and_a_zero_length_frame_is_not_a_record() {
    let mut bytes = frame(b"{\"a\":1}");
    bytes.extend(frame(b"x"));
    let (records, tail) = scan(&bytes);
    assert_eq!(records, vec![&b"{\"a\":1}"[..], &b"x"[..]]);
    assert_eq!(tail, Tail::Clean);
    // A file extended with zeros by a crash: CRC-32 of nothing is 0, so the zero header
    // would otherwise pass.
    bytes.extend([0u8; 16]);
    let (records, tail) = scan(&bytes);
    assert_eq!(records.len(), 2);
    assert!(matches!(tail, Tail::Torn(_)));
}

#[cfg(unix)]
#[test]
fn spool_segments_are_readable_by_the_gateways_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let mut j = Journal::open(dir.path()).expect("open");
    j.append(entry(1, Utc::now())).expect("append");
    let files = segments(dir.path());
    assert!(!files.is_empty());
    for f in files {
        let mode = std::fs::metadata(&f)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
}

#[test]
fn appended_entries_survive_a_reopen_in_order_with_every_field() {
    let dir = tempfile::tempdir().expect("dir");
    let now = Utc::now();
    let hook = Entry {
        id: "hook-1".into(),
        received_at: now,
        request: SpooledRequest::Hook {
            connector: "shopify".into(),
            method: "POST".into(),
            path_and_query: "/hooks/shopify".into(),
            headers: vec![("x-shopify-topic".into(), "orders/paid".into())],
            body: bytes::Bytes::from_static(b"{\"id\":1}\xff"),
        },
    };
    {
        let mut j = Journal::open(dir.path()).expect("open");
        j.append(entry(1, now)).expect("append");
        j.append(hook.clone()).expect("append");
        j.append(entry(2, now)).expect("append");
    }
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(ids(&j), ["id-1", "hook-1", "id-2"]);
    assert_eq!(j.pending.values().nth(1).map(|p| &p.entry), Some(&hook));
    assert_eq!(
        j.pending.values().next().map(|p| &p.entry),
        Some(&entry(1, now))
    );
}

#[test]
fn a_torn_tail_is_ignored_and_later_appends_stay_readable() {
    let dir = tempfile::tempdir().expect("dir");
    let now = Utc::now();
    {
        let mut j = Journal::open(dir.path()).expect("open");
        j.append(entry(1, now)).expect("append");
        j.append(entry(2, now)).expect("append");
    }
    // A crash in the middle of the second append: its frame is cut short.
    let seg = segments(dir.path()).pop().expect("segment");
    let len = std::fs::metadata(&seg).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(len - 10)
        .expect("truncate");
    {
        let mut j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(ids(&j), ["id-1"]);
        assert_eq!(j.damaged(), 0, "a torn tail is not damage");
        j.append(entry(3, now)).expect("append after recovery");
    }
    let j = Journal::open(dir.path()).expect("reopen again");
    assert_eq!(ids(&j), ["id-1", "id-3"]);
}

#[test]
fn a_crc_mismatch_in_the_middle_is_detected_and_the_file_is_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let now = Utc::now();
    {
        let mut j = Journal::open(dir.path()).expect("open");
        for n in 1..=3 {
            j.append(entry(n, now)).expect("append");
        }
    }
    let seg = segments(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let first_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    // Flip a byte inside the second record's payload.
    let second = 8 + first_len;
    bytes[second + 8 + 5] ^= 0x55;
    std::fs::write(&seg, &bytes).expect("write");

    let mut j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(ids(&j), ["id-1"], "records before the damage are used");
    assert_eq!(j.damaged(), 1);
    let first = *j.pending.keys().next().expect("pending");
    j.done(first).expect("done");
    assert!(seg.exists(), "a damaged segment is never deleted");
}

#[test]
fn a_spool_directory_is_used_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().expect("dir");
    let first = Journal::open(dir.path()).expect("open");
    let err = Journal::open(dir.path())
        .err()
        .expect("second open refused");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    Journal::open(dir.path()).expect("free again");
}

#[test]
fn done_marks_survive_a_reopen_and_drained_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("dir");
    let now = Utc::now();
    {
        let mut j = Journal::open(dir.path()).expect("open");
        let first = j.append(entry(1, now)).expect("append");
        j.append(entry(2, now)).expect("append");
        j.append(entry(3, now)).expect("append");
        j.done(first).expect("done");
    }
    let mut j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(ids(&j), ["id-2", "id-3"]);
    let orders: Vec<u64> = j.pending.keys().copied().collect();
    for o in orders {
        j.done(o).expect("done");
    }
    assert!(j.pending.is_empty());
    assert_eq!(j.segment_count(), 0);
    assert!(
        segments(dir.path()).is_empty(),
        "drained segments are deleted"
    );
    drop(j);
    let j = Journal::open(dir.path()).expect("reopen empty");
    assert!(j.pending.is_empty());
}

#[tokio::test]
async fn entries_failing_past_give_up_after_move_to_dead_log_and_stay_there() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::open(&settings(dir.path())).expect("open");
    let now = Utc::now();
    spool
        .append(now - chrono::Duration::hours(2), postback(1))
        .await
        .expect("append old");
    spool.append(now, postback(2)).await.expect("append new");
    let drain::Next::Due(order, first) = spool.next(now) else {
        panic!("an entry is due");
    };
    assert_eq!(first.request, postback(1));

    spool.failed(order, now, &ReplayError::Unavailable).await;
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead, stats.dead_total), (1, 1, 1));

    drop(spool);
    let spool = Spool::open(&settings(dir.path())).expect("reopen");
    let stats = spool.stats();
    assert_eq!(
        (stats.pending, stats.dead),
        (1, 1),
        "dead entries are never pending again"
    );
    let dead = std::fs::read(dir.path().join("dead.log")).expect("dead.log");
    let (records, _) = scan(&dead);
    let record: journal::DeadRecord = serde_json::from_slice(records[0]).expect("record");
    assert_eq!(record.entry.request, postback(1));
    assert_eq!(record.attempts, 1);
}

#[tokio::test]
async fn a_refused_entry_waits_on_its_own_backoff_while_later_ones_go_on() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::open(&settings(dir.path())).expect("open");
    let now = Utc::now();
    spool.append(now, postback(1)).await.expect("append");
    spool.append(now, postback(2)).await.expect("append");
    let drain::Next::Due(order, _) = spool.next(now) else {
        panic!("due");
    };
    spool
        .failed(order, now, &ReplayError::Refused("no connector".into()))
        .await;
    let drain::Next::Due(_, second) = spool.next(now) else {
        panic!("the second is due");
    };
    assert_eq!(second.request, postback(2));
    assert_eq!(
        spool.stats().dead,
        0,
        "refused within give_up_after: kept pending"
    );
}

/// Fails with `Unavailable` a given number of times, then succeeds.
struct Flaky {
    failures: AtomicUsize,
    replayed: std::sync::Mutex<Vec<String>>,
}

impl Replay for std::sync::Arc<Flaky> {
    async fn replay(&self, entry: &Entry) -> Result<(), ReplayError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ReplayError::Unavailable);
        }
        self.replayed.lock().expect("lock").push(entry.id.clone());
        Ok(())
    }
}

#[tokio::test]
async fn the_drainer_backs_off_while_down_then_replays_everything_once_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::open(&settings(dir.path())).expect("open");
    let now = Utc::now();
    let a = spool.append(now, postback(1)).await.expect("append");
    let b = spool.append(now, postback(2)).await.expect("append");
    let flaky = std::sync::Arc::new(Flaky {
        failures: AtomicUsize::new(2),
        replayed: std::sync::Mutex::new(Vec::new()),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drain::run(spool.clone(), flaky.clone(), stopped));
    let started = std::time::Instant::now();
    while spool.stats().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "drained in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two failed probes: pauses of about 1 s and 2 s, never a hot loop.
    assert!(started.elapsed() >= Duration::from_millis(2000));
    assert_eq!(*flaky.replayed.lock().expect("lock"), [a, b]);
    assert!(!spool.database_down());
    assert_eq!(spool.stats().drained_total, 2);
    let _ = stop.send(());
    task.await.expect("drainer stops");
    assert!(segments(dir.path()).is_empty());
}

/// Records when each entry was replayed.
struct Stamped(std::sync::Mutex<Vec<std::time::Instant>>);

impl Replay for std::sync::Arc<Stamped> {
    async fn replay(&self, _: &Entry) -> Result<(), ReplayError> {
        self.0.lock().expect("lock").push(std::time::Instant::now());
        Ok(())
    }
}

#[tokio::test]
async fn the_first_probe_waits_after_the_write_that_spooled_an_entry() {
    // On SQLite a probe holds the only writer for a whole busy timeout: sent right after
    // the failed write, it would make the next live request wait two timeouts.
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::open(&settings(dir.path())).expect("open");
    spool.append(Utc::now(), postback(1)).await.expect("append");
    assert!(spool.database_down(), "an append means a write just failed");
    let stamped = std::sync::Arc::new(Stamped(std::sync::Mutex::new(Vec::new())));
    let started = std::time::Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drain::run(spool.clone(), stamped.clone(), stopped));
    while spool.stats().pending > 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = stamped.0.lock().expect("lock")[0];
    // The pause is 1 s with ±20 % jitter.
    assert!(
        at - started >= Duration::from_millis(800),
        "probed after {:?}",
        at - started
    );
    let _ = stop.send(());
    task.await.expect("drainer stops");
}

#[test]
fn a_postback_without_optional_fields_round_trips() {
    let mut request = postback(1);
    if let SpooledRequest::Postback { postback, .. } = &mut request {
        postback.amount = None;
        postback.event = None;
        postback.currency = None;
    }
    let e = Entry {
        id: "x".into(),
        received_at: Utc::now(),
        request,
    };
    let json = serde_json::to_vec(&journal::Record::Entry(Box::new(e.clone()))).expect("json");
    let back: journal::Record = serde_json::from_slice(&json)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&json)));
    assert!(matches!(back, journal::Record::Entry(b) if *b == e));
}

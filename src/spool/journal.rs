//! The spool on disk: append-only segment files of framed records, and `dead.log`.
//!
//! A frame is `len: u32 LE | crc: u32 LE | payload`, the CRC-32 (ISO-HDLC) taken over the
//! payload, a JSON [`Record`]. Reading a file stops at the first frame that is short, has a
//! zero or oversized length, or fails its CRC:
//!
//! * at the end of the file (or followed by zeros only) it is a torn write from a crash
//!   during an append, never acknowledged (answers wait for the fsync); it is ignored;
//! * followed by more data it is damage: the readable records before it are used, the
//!   file is reported and never deleted, so an operator can look at the rest.
//!
//! Segments are `seg-<seq>.log`. Each process start and each [`SEGMENT_BYTES`] begin a
//! new one, so an append never follows a torn frame. Entries are appended with an fsync of
//! the file (and of the directory when the file is new); `done` markers go to the current
//! segment without one: a marker lost in a crash only means a replay that the pipeline's
//! dedupe keys answer as a duplicate. The oldest segments are deleted once none of their
//! entries is pending. An entry that gives up is copied to `dead.log` (fsync'd) first; ids
//! in `dead.log` are never pending again, whatever the segments say.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Entry;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const HEADER: usize = 8;
/// Larger than any request the HTTP layer accepts, base64 and JSON included.
const MAX_RECORD: usize = 64 << 20;
/// A new segment starts past this size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const DEAD_FILE: &str = "dead.log";

/// One record of a segment.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Record {
    /// A verified request waiting for the database.
    Entry(Box<Entry>),
    /// The entry was replayed into the pipeline (accepted, duplicate or rejected).
    Done { id: String },
}

/// One record of `dead.log`: an entry that still failed after `give_up_after`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadRecord {
    pub entry: Entry,
    pub died_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: String,
}

/// Frames `payload`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&CRC.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// How the frames of a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    Clean,
    /// A partial last frame (crash during an append) at this offset.
    Torn(u64),
    /// A bad frame at this offset with data after it.
    Damaged(u64),
}

/// The payloads of the good frames of `bytes`, in order, and how they ended.
pub(crate) fn scan(bytes: &[u8]) -> (Vec<&[u8]>, Tail) {
    let mut payloads = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let bad = |end: usize| {
            if end >= rest.len() || rest[end..].iter().all(|b| *b == 0) {
                Tail::Torn(pos as u64)
            } else {
                Tail::Damaged(pos as u64)
            }
        };
        if rest.len() < HEADER {
            return (payloads, Tail::Torn(pos as u64));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_RECORD {
            // The length cannot be trusted: only an all-zero rest is plainly a torn tail.
            return (payloads, bad(HEADER));
        }
        let end = HEADER + len;
        if end > rest.len() {
            return (payloads, Tail::Torn(pos as u64));
        }
        let payload = &rest[HEADER..end];
        if CRC.checksum(payload) != crc {
            return (payloads, bad(end));
        }
        payloads.push(payload);
        pos += end;
    }
    (payloads, Tail::Clean)
}

/// A pending entry and where it lives.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub entry: Entry,
    pub segment: u64,
    /// Replays tried in this process.
    pub attempts: u32,
    /// Not before this (set after a refusal; the drainer's own backoff covers outages).
    pub not_before: Option<DateTime<Utc>>,
}

struct Segment {
    path: PathBuf,
    /// Entries of this segment neither done nor dead.
    live: usize,
    /// Unreadable past some offset: kept for an operator, never deleted.
    damaged: bool,
}

/// The spool directory, opened: pending entries in arrival order, dead entries counted.
pub(crate) struct Journal {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File, u64)>,
    next_seq: u64,
    /// Arrival order → entry.
    pub pending: BTreeMap<u64, Pending>,
    next_order: u64,
    dead: Option<File>,
    pub dead_count: usize,
    /// Held (locked) while open: two processes appending to one spool would interleave.
    _lock: File,
}

impl Journal {
    /// Opens (creating) `dir` and reads every segment and `dead.log`.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => {
                io::Error::other("in use by another process; give each gateway its own [spool] dir")
            }
            std::fs::TryLockError::Error(e) => e,
        })?;
        let mut seqs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let seq = name
                    .to_str()?
                    .strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((seq, e.path()))
            })
            .collect();
        seqs.sort();

        let dead_path = dir.join(DEAD_FILE);
        let mut dead_ids = HashSet::new();
        if dead_path.exists() {
            let bytes = std::fs::read(&dead_path)?;
            let (payloads, tail) = scan(&bytes);
            for p in payloads {
                match serde_json::from_slice::<DeadRecord>(p) {
                    Ok(d) => {
                        dead_ids.insert(d.entry.id);
                    }
                    Err(e) => {
                        tracing::error!(file = %dead_path.display(), error = %e, "Unreadable spool record.")
                    }
                }
            }
            match tail {
                Tail::Clean => {}
                // dead.log is appended to: nothing may follow a bad frame. The bytes from
                // it on are set aside, not thrown away.
                Tail::Torn(at) | Tail::Damaged(at) => {
                    let aside = dir.join(format!("{DEAD_FILE}.tail-{at}"));
                    std::fs::write(&aside, &bytes[at as usize..])?;
                    OpenOptions::new()
                        .write(true)
                        .open(&dead_path)?
                        .set_len(at)?;
                    tracing::warn!(file = %dead_path.display(), offset = at, aside = %aside.display(), "Spool dead file had a bad tail; set aside.");
                }
            }
        }

        let mut journal = Journal {
            dir: dir.to_owned(),
            segments: BTreeMap::new(),
            active: None,
            next_seq: seqs.last().map_or(1, |(s, _)| s + 1),
            pending: BTreeMap::new(),
            next_order: 0,
            dead: None,
            dead_count: dead_ids.len(),
            _lock: lock,
        };
        let mut done = HashSet::new();
        let mut entries = Vec::new();
        for (seq, path) in seqs {
            let bytes = std::fs::read(&path)?;
            let (payloads, tail) = scan(&bytes);
            let mut damaged = false;
            if let Tail::Damaged(at) = tail {
                tracing::error!(file = %path.display(), offset = at, "Spool segment is damaged; records after the offset cannot be read. The file is kept.");
                damaged = true;
            }
            for p in payloads {
                match serde_json::from_slice::<Record>(p) {
                    Ok(Record::Entry(e)) => entries.push((seq, *e)),
                    Ok(Record::Done { id }) => {
                        done.insert(id);
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "Unreadable spool record; the file is kept.");
                        damaged = true;
                    }
                }
            }
            journal.segments.insert(
                seq,
                Segment {
                    path,
                    live: 0,
                    damaged,
                },
            );
        }
        for (seq, entry) in entries {
            if done.contains(&entry.id) || dead_ids.contains(&entry.id) {
                continue;
            }
            if let Some(s) = journal.segments.get_mut(&seq) {
                s.live += 1;
            }
            journal.insert(seq, entry);
        }
        journal.compact()?;
        Ok(journal)
    }

    fn insert(&mut self, segment: u64, entry: Entry) -> u64 {
        let order = self.next_order;
        self.next_order += 1;
        self.pending.insert(
            order,
            Pending {
                entry,
                segment,
                attempts: 0,
                not_before: None,
            },
        );
        order
    }

    /// Appends `entry` and fsyncs it; only then is it pending. Returns its order.
    pub fn append(&mut self, entry: Entry) -> io::Result<u64> {
        let bytes = frame(&serde_json::to_vec(&Record::Entry(Box::new(
            entry.clone(),
        )))?);
        let seq = self.write(&bytes, true)?;
        if let Some(s) = self.segments.get_mut(&seq) {
            s.live += 1;
        }
        Ok(self.insert(seq, entry))
    }

    /// Marks the entry replayed; deletes segments that hold nothing pending any more.
    pub fn done(&mut self, order: u64) -> io::Result<()> {
        let Some(p) = self.pending.remove(&order) else {
            return Ok(());
        };
        self.release(p.segment);
        let bytes = frame(&serde_json::to_vec(&Record::Done {
            id: p.entry.id.clone(),
        })?);
        // Not fsync'd: see the module docs.
        let written = self.write(&bytes, false).map(drop);
        self.compact()?;
        written
    }

    /// Copies the entry to `dead.log` (fsync'd), then forgets it. On error it stays pending.
    pub fn bury(&mut self, order: u64, now: DateTime<Utc>, last_error: &str) -> io::Result<()> {
        let Some(p) = self.pending.get(&order) else {
            return Ok(());
        };
        let record = DeadRecord {
            entry: p.entry.clone(),
            died_at: now,
            attempts: p.attempts,
            last_error: last_error.to_owned(),
        };
        let bytes = frame(&serde_json::to_vec(&record)?);
        if self.dead.is_none() {
            let path = self.dir.join(DEAD_FILE);
            let created = !path.exists();
            let file = private(OpenOptions::new().create(true).append(true)).open(&path)?;
            if created {
                sync_dir(&self.dir)?;
            }
            self.dead = Some(file);
        }
        if let Some(file) = self.dead.as_mut()
            && let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data())
        {
            // A partial frame must not stay in front of the next one.
            self.dead = None;
            return Err(e);
        }
        self.dead_count += 1;
        if let Some(p) = self.pending.remove(&order) {
            self.release(p.segment);
        }
        self.compact()
    }

    fn release(&mut self, segment: u64) {
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// Writes one frame to the current segment, starting one if needed; returns its seq.
    fn write(&mut self, bytes: &[u8], sync: bool) -> io::Result<u64> {
        if self
            .active
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= SEGMENT_BYTES)
        {
            let seq = self.next_seq;
            let path = self.dir.join(format!("seg-{seq:010}.log"));
            let file = private(OpenOptions::new().create_new(true).append(true)).open(&path)?;
            sync_dir(&self.dir)?;
            self.next_seq += 1;
            self.segments.insert(
                seq,
                Segment {
                    path,
                    live: 0,
                    damaged: false,
                },
            );
            self.active = Some((seq, file, 0));
        }
        let Some((seq, file, len)) = self.active.as_mut() else {
            return Err(io::Error::other("no active segment"));
        };
        let result = file
            .write_all(bytes)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                *len += bytes.len() as u64;
                Ok(*seq)
            }
            Err(e) => {
                // Whatever part of the frame landed would hide the frames after it: the
                // next write starts a new segment.
                self.active = None;
                Err(e)
            }
        }
    }

    /// Deletes the oldest segments while none of their entries is pending. Damaged ones
    /// are kept and skipped.
    fn compact(&mut self) -> io::Result<()> {
        let mut deleted = false;
        let seqs: Vec<u64> = self.segments.keys().copied().collect();
        for seq in seqs {
            let Some(s) = self.segments.get(&seq) else {
                continue;
            };
            if s.live > 0 {
                break;
            }
            if s.damaged {
                continue;
            }
            if self.active.as_ref().is_some_and(|(a, _, _)| *a == seq) {
                if !self.pending.is_empty() {
                    break;
                }
                self.active = None;
            }
            std::fs::remove_file(&s.path)?;
            self.segments.remove(&seq);
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Segments that could not be read to the end.
    pub fn damaged(&self) -> usize {
        self.segments.values().filter(|s| s.damaged).count()
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Spool files hold requests as they arrived (raw webhook bodies among them): readable by
/// the gateway's user only, whatever the umask.
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Makes a file's creation or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

//! Open-time recovery: find every topic in the log directory and make its last segment whole.
//!
//! Only the last segment of a topic can hold a torn write, because the writer fsyncs a segment
//! before starting the next one. So only that segment is scanned here, record by record (CRC and
//! offset sequence); the first bad frame and everything after it is cut off, and the file is
//! fsynced before any new append lands behind it. Everything before the cut was either
//! acknowledged or never seen by anyone, and the next offset continues right after it. Sealed
//! segments are only checked for a readable header here; their index is built on first use.

use crate::format::{HEADER_LEN, HeaderError, SegmentHeader};
use crate::segment::{self, Segment, SparseIndex};
use crate::writer::{ActiveSegment, now_nanos};
use crate::{LogConfig, LogError, name};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A topic as found on disk.
pub(crate) struct LoadedTopic {
    pub name: String,
    pub dir: PathBuf,
    pub segments: VecDeque<Segment>,
    pub next_offset: u64,
    pub active: Option<ActiveSegment>,
}

/// Name of the lock file in the log directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Takes the log directory for this process (an advisory `flock`, released by the kernel when
/// the process dies, so a crash never leaves it stale), then loads every topic. Two writers on
/// one directory would interleave frames and reuse offsets; the second `open` fails instead.
pub(crate) fn load_all(config: &LogConfig, syncs: &AtomicU64) -> Result<(File, Vec<LoadedTopic>), LogError> {
    let root = &config.dir;
    let ctx = |what: &str, path: &Path| format!("{what} {}", path.display());
    // Messages are for the server's user alone: directories 0700, files 0600.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| LogError::io(ctx("creating", root), e))?;
    let lock_path = root.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| LogError::io(ctx("opening", &lock_path), e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(LogError::Io(format!(
                "{} is locked: another topic log has this directory open",
                root.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(LogError::io(ctx("locking", &lock_path), e)),
    }
    Ok((lock, load_topics(root, syncs)?))
}

fn load_topics(root: &Path, syncs: &AtomicU64) -> Result<Vec<LoadedTopic>, LogError> {
    let mut topics = Vec::new();
    let not_ours = |path: &Path| tracing::warn!(path = %path.display(), "ignoring a directory that is not a topic");
    for project_dir in read_dir_sorted(root)? {
        let Some(project) = component(&project_dir)? else {
            not_ours(&project_dir);
            continue;
        };
        for topic_dir in read_dir_sorted(&project_dir)? {
            let Some(name) = component(&topic_dir)?.and_then(|topic| name::join(&project, &topic)) else {
                not_ours(&topic_dir);
                continue;
            };
            topics.push(load_topic(name, topic_dir, syncs)?);
        }
    }
    Ok(topics)
}

/// The project or topic id a directory stands for (see `name`).
fn component(dir: &Path) -> Result<Option<String>, LogError> {
    name::component_from_dir(dir).map_err(|e| LogError::io(format!("reading the name of {}", dir.display()), e))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn load_topic(name: String, dir: PathBuf, syncs: &AtomicU64) -> Result<LoadedTopic, LogError> {
    let io_err = |what: &str, path: &Path, e: io::Error| LogError::io(format!("{what} {}", path.display()), e);
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))? {
        let entry = entry.map_err(|e| io_err("listing", &dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(segment::parse_file_name) {
            files.push((base, entry.path()));
        }
    }
    files.sort();
    let Some((last_base, last_path)) = files.pop() else {
        // Created but the first segment never made it: an empty topic.
        return Ok(LoadedTopic { name, dir, segments: VecDeque::new(), next_offset: 0, active: None });
    };
    let mut segments = VecDeque::with_capacity(files.len() + 1);
    for (base, path) in files {
        let mut file = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
        let size = file.metadata().map_err(|e| io_err("reading metadata of", &path, e))?.len();
        let mut head = Vec::with_capacity(HEADER_LEN as usize);
        file.by_ref().take(HEADER_LEN).read_to_end(&mut head).map_err(|e| io_err("reading", &path, e))?;
        match SegmentHeader::decode(&head) {
            Ok(h) if h.base_offset == base => {}
            Ok(h) => {
                tracing::warn!(path = %path.display(), header_base = h.base_offset, "segment header disagrees with its file name; trusting the name")
            }
            Err(HeaderError::UnsupportedVersion(v)) => return Err(unsupported(&path, v)),
            // Records carry their own CRC and offset; reads check them one by one.
            Err(HeaderError::Invalid) => tracing::error!(path = %path.display(), "damaged header in a sealed segment"),
        }
        segments.push_back(Segment {
            base,
            path,
            size,
            max_ts: None,
            first_ts: None,
            scanned: false,
            index: SparseIndex::default(),
            recent_ends: Default::default(),
        });
    }
    let (segment, active, next_offset) = recover_last(last_base, last_path, syncs)?;
    segments.push_back(segment);
    Ok(LoadedTopic { name, dir, segments, next_offset, active: Some(active) })
}

fn unsupported(path: &Path, version: u16) -> LogError {
    LogError::Io(format!("{} has format version {version}, which this build cannot read", path.display()))
}

/// Repairs the header and truncates a torn tail of the last segment; returns it as the active one,
/// with the topic's next offset.
fn recover_last(base: u64, path: PathBuf, syncs: &AtomicU64) -> Result<(Segment, ActiveSegment, u64), LogError> {
    let io_err = |what: &str, e: io::Error| LogError::io(format!("{what} {}", path.display()), e);
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_err("opening", e))?;
    let len = file.metadata().map_err(|e| io_err("reading metadata of", e))?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    let head_len = read_at_most(&file, &mut head).map_err(|e| io_err("reading", e))?;
    let mut dirty = false;
    let created_nanos = match SegmentHeader::decode(&head[..head_len]) {
        Ok(h) => h.created_nanos,
        Err(HeaderError::UnsupportedVersion(v)) => return Err(unsupported(&path, v)),
        Err(HeaderError::Invalid) => {
            // A crash right after the roll created the file: the header never reached the disk.
            // The name says which base it has; the records (if any) are checked by CRC below.
            tracing::warn!(path = %path.display(), len, "rewriting the torn header of the last segment");
            let now = now_nanos();
            file.write_all_at(&SegmentHeader { base_offset: base, created_nanos: now }.encode(), 0)
                .map_err(|e| io_err("repairing", e))?;
            dirty = true;
            now
        }
    };
    let len = len.max(HEADER_LEN);
    let scan = segment::scan(&file, base, len).map_err(|e| io_err("scanning", e))?;
    if scan.valid_len < len {
        tracing::warn!(path = %path.display(), kept = scan.valid_len, dropped = len - scan.valid_len, next_offset = scan.end,
            "truncating a torn or corrupt tail");
        file.set_len(scan.valid_len).map_err(|e| io_err("truncating", e))?;
        dirty = true;
    }
    if dirty {
        // sync_all: the size changed, and appends must not land behind garbage after a crash.
        file.sync_all().map_err(|e| io_err("syncing", e))?;
        syncs.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(path = %path.display(), records = scan.records, next_offset = scan.end, "recovered last segment");
    let last_indexed = scan.index.last_position();
    let mut segment = Segment {
        base,
        path: path.clone(),
        size: scan.valid_len,
        max_ts: scan.max_ts,
        first_ts: scan.first_ts,
        scanned: true,
        index: scan.index,
        recent_ends: Default::default(),
    };
    // Consumers resume at the end of what was recovered: read from there, not from the index.
    segment.note_commit_end(scan.end, scan.valid_len);
    let active = ActiveSegment { base, path, file, size: scan.valid_len, created_nanos, last_indexed };
    Ok((segment, active, scan.end))
}

fn read_at_most(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

//! Topic names and the directories that hold them.
//!
//! The log accepts exactly the names [`ferrocore_model::pubsub::TopicName`] accepts, so a topic
//! that a registry or the Pub/Sub API may name can always be stored.
//!
//! A topic `projects/{project}/topics/{topic}` lives in `{dir}/{project}/{topic}/`, one directory
//! per component:
//! * Usually the component percent-encoded, so that only `[A-Za-z0-9_-]` and `%XX` reach the file
//!   system. That rules out `.`, `..`, separators and hidden files.
//! * When that encoding would be longer than a file name may be (255 bytes: a 255-character topic
//!   id full of `~+%` encodes to 763), `+` and the SHA-256 of the component in hex, with a `NAME`
//!   file inside holding the component itself. Percent-encoding never produces a `+`, so the two
//!   forms cannot collide, and names that fit keep the directories they always had.
//!
//! Either way no name can escape the log directory, and each component has exactly one
//! directory name. Both are checked when directories are read back at open: a percent-encoded
//! name must be canonical, a hashed one must match the hash of its `NAME` and be too long for
//! the other form.

use crate::LogError;
use ferrocore_model::pubsub::TopicName;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest file name most file systems accept; an encoded component must fit.
const MAX_COMPONENT_BYTES: usize = 255;

/// Starts every hashed directory name; never produced by percent-encoding.
const HASHED_PREFIX: char = '+';

/// In a hashed directory: the component it stands for, as UTF-8 without a line end.
pub(crate) const LABEL_FILE: &str = "NAME";

/// Where `LABEL_FILE` is written before it is renamed into place.
const LABEL_TEMP_FILE: &str = "NAME.tmp";

/// Checks `name` against Ferrocore's one topic grammar. The error carries the model's message,
/// which is safe to show a client.
pub(crate) fn parse(name: &str) -> Result<TopicName, LogError> {
    TopicName::parse("topic", name).map_err(|e| LogError::InvalidTopic(e.message))
}

/// Where a validated topic keeps its segments.
pub(crate) fn topic_dir(root: &Path, name: &TopicName) -> PathBuf {
    root.join(dir_name(name.project())).join(dir_name(name.id()))
}

/// Creates the directories of `name` under `root` (which exists), with the `NAME` file of each
/// hashed one, and makes every new name durable before returning, so that no segment can
/// outlive a crash while its directory, or the record of whose directory it is, does not.
/// Returns the topic's directory.
pub(crate) fn create_topic_dir(root: &Path, name: &str, syncs: &AtomicU64) -> io::Result<PathBuf> {
    let name = parse(name).map_err(|e| io::Error::other(e.to_string()))?;
    let mut dir = root.to_path_buf();
    for component in [name.project(), name.id()] {
        let parent = dir;
        dir = parent.join(dir_name(component));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        // Also when it existed: an earlier attempt may have failed between the two steps.
        crate::writer::sync_dir(&parent)?;
        syncs.fetch_add(1, Ordering::Relaxed);
        if needs_hash(component) {
            write_label(&dir, component, syncs)?;
        }
    }
    Ok(dir)
}

/// Makes sure the hashed directory `dir` says it holds `component`.
fn write_label(dir: &Path, component: &str, syncs: &AtomicU64) -> io::Result<()> {
    match read_label(dir) {
        Ok(Some(existing)) if existing == component => return Ok(()),
        Ok(Some(_)) | Err(_) => {
            // Two components with one SHA-256, or a damaged label: neither may be mixed up.
            return Err(io::Error::other(format!("{} is labelled for another name", dir.display())));
        }
        Ok(None) => {}
    }
    // A directory without a label was skipped at open; adopting one that already holds files
    // could overwrite data of a topic this log never listed.
    for entry in fs::read_dir(dir)? {
        if entry?.file_name() != LABEL_TEMP_FILE {
            return Err(io::Error::other(format!("{} holds files but no {LABEL_FILE}", dir.display())));
        }
    }
    let temp = dir.join(LABEL_TEMP_FILE);
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
    file.write_all(component.as_bytes())?;
    file.sync_all()?;
    // The rename makes the label appear whole or not at all.
    fs::rename(&temp, dir.join(LABEL_FILE))?;
    crate::writer::sync_dir(dir)?;
    syncs.fetch_add(2, Ordering::Relaxed);
    Ok(())
}

/// The label of a hashed directory: `None` when it has none, an error when it cannot be read or
/// is not a plausible component (too long, not UTF-8).
fn read_label(dir: &Path) -> io::Result<Option<String>> {
    let file = match File::open(dir.join(LABEL_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::with_capacity(MAX_COMPONENT_BYTES);
    // One byte more than a component may have, to tell "too long" from "exactly the limit".
    file.take(MAX_COMPONENT_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "label longer than any component"));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "label is not UTF-8"))
}

/// The component (project or topic id) stored in the directory `dir`, if its name is the one
/// [`dir_name`] gives that component; `None` for anything else, which is not ours. Fails only when
/// the label of a hashed directory cannot be read, so that open does not silently lose a topic.
pub(crate) fn component_from_dir(dir: &Path) -> io::Result<Option<String>> {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { return Ok(None) };
    if !name.starts_with(HASHED_PREFIX) {
        return Ok(decode(name));
    }
    let component = match read_label(dir) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(e) => return Err(e),
    };
    // The hashed form is canonical only for components the short form cannot hold.
    Ok((needs_hash(&component) && dir_name(&component) == name).then_some(component))
}

/// The full topic name of a project and topic directory's components, if it is a valid one.
pub(crate) fn join(project: &str, topic: &str) -> Option<String> {
    let name = format!("projects/{project}/topics/{topic}");
    parse(&name).is_ok().then_some(name)
}

/// The one directory name of a project or topic id.
fn dir_name(component: &str) -> String {
    if !needs_hash(component) {
        return encode(component);
    }
    use std::fmt::Write;
    let mut out = String::with_capacity(65);
    out.push(HASHED_PREFIX);
    for b in Sha256::digest(component.as_bytes()) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn needs_hash(component: &str) -> bool {
    encoded_len(component) > MAX_COMPONENT_BYTES
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn encoded_len(s: &str) -> usize {
    s.bytes().map(|b| if is_plain(b) { 1 } else { 3 }).sum()
}

fn encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(encoded_len(s));
    for b in s.bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Inverse of [`encode`]; `None` unless `s` is exactly what `encode` would have produced.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    (encode(&decoded) == s).then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates the directories of `name` and reads them back as open does.
    fn round_trip(root: &Path, name: &str) -> (PathBuf, Option<String>) {
        let dir = create_topic_dir(root, name, &AtomicU64::new(0)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(dir, topic_dir(root, &parse(name).expect("valid")));
        let project = component_from_dir(dir.parent().expect("project dir")).expect("readable");
        let topic = component_from_dir(&dir).expect("readable");
        let back = project.zip(topic).and_then(|(p, t)| join(&p, &t));
        (dir, back)
    }

    #[test]
    fn accepts_what_the_model_accepts_and_maps_it_back() {
        let root = tempfile::tempdir().expect("tempdir");
        let long_id = format!("a{}", "~+%".repeat(84) + "bc");
        assert_eq!(long_id.len(), 255);
        for name in [
            "projects/p/topics/telemetry",
            "projects/my-project-123/topics/a.b~c+d%e_f-g",
            "projects/example.com:proj/topics/Abc",
            "projects/ü/topics/xyz",
            &format!("projects/p/topics/{long_id}"),
            &format!("projects/{}/topics/abc", ".".repeat(90)),
            &format!("projects/{}/topics/{long_id}", "ü".repeat(127)),
        ] {
            let (dir, back) = round_trip(root.path(), name);
            assert_eq!(back.as_deref(), Some(name));
            for part in dir.strip_prefix(root.path()).expect("under root").components() {
                let part = part.as_os_str().to_str().expect("utf8");
                assert!(part.len() <= MAX_COMPONENT_BYTES, "{part}");
                assert!(!part.starts_with('.'), "{part}");
            }
            // Creating again (a topic reopened without segments) finds everything in place.
            assert_eq!(round_trip(root.path(), name).1.as_deref(), Some(name));
        }
    }

    #[test]
    fn short_names_keep_their_percent_encoded_directories() {
        let name = parse("projects/other.org:p/topics/a.b~c+d%e").expect("valid");
        assert_eq!(topic_dir(Path::new("/log"), &name), Path::new("/log/other%2Eorg%3Ap/a%2Eb%7Ec%2Bd%25e"));
        // ".." is a legal project id; it still stays inside the root.
        let dots = parse("projects/../topics/abc").expect("grammar allows dots");
        assert_eq!(topic_dir(Path::new("/log"), &dots), Path::new("/log/%2E%2E/abc"));
        let long = parse(&format!("projects/p/topics/a{}", "~".repeat(85))).expect("valid");
        let dir = topic_dir(Path::new("/log"), &long);
        assert_eq!(dir.parent(), Some(Path::new("/log/p")), "the short project keeps its form");
        let hashed = dir.file_name().and_then(|n| n.to_str()).expect("utf8");
        assert!(hashed.starts_with('+') && hashed.len() == 65, "{hashed}");
    }

    #[test]
    fn rejects_what_the_model_rejects() {
        for name in [
            "",
            "topics/t",
            "projects/p/topics/",
            "projects/p/topics/ab",
            "projects/p/topics/goog-x",
            "projects/p/topics/t/x",
            "projects//topics/abc",
            "projects/p q/topics/abc",
            "projects/p/topics/../../etc",
            "projects/p/topics/9abc",
            "projects/p/topics/abc/",
            "projects/p/subscriptions/abc",
            "projects/p\n/topics/abc",
        ] {
            assert_eq!(parse(name).is_ok(), TopicName::parse("t", name).is_ok(), "{name:?}");
            assert!(matches!(parse(name), Err(LogError::InvalidTopic(_))), "{name:?}");
        }
        assert!(parse(&format!("projects/p/topics/a{}", "b".repeat(255))).is_err());
        assert!(parse(&format!("projects/{}/topics/abc", "p".repeat(256))).is_err());
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("abc"), Some("abc".to_owned()));
        assert_eq!(decode("a%2Eb"), Some("a.b".to_owned()));
        assert_eq!(decode("a%2eb"), None, "lowercase hex is not canonical");
        assert_eq!(decode("%41"), None, "plain characters must not be escaped");
        assert_eq!(decode("a.b"), None, "dots are always escaped");
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%ZZ"), None);
        assert_eq!(decode("%FF"), None, "not UTF-8");
        assert_eq!(join("p", "ab"), None, "topic id too short");
    }

    #[test]
    fn hashed_directories_are_checked_when_read_back() {
        let root = tempfile::tempdir().expect("tempdir");
        let long = "~".repeat(90);
        let short = "abc";
        let dir = root.path().join(dir_name(&long));
        fs::create_dir(&dir).expect("mkdir");
        assert_eq!(component_from_dir(&dir).expect("readable"), None, "no label: not ours");
        fs::write(dir.join(LABEL_FILE), &long).expect("label");
        assert_eq!(component_from_dir(&dir).expect("readable"), Some(long.clone()));
        fs::write(dir.join(LABEL_FILE), format!("{long}x")).expect("label");
        assert_eq!(component_from_dir(&dir).expect("readable"), None, "label and hash disagree");
        fs::write(dir.join(LABEL_FILE), vec![b'~'; 300]).expect("label");
        assert_eq!(component_from_dir(&dir).expect("readable"), None, "label too long");

        // A short component has one spelling, the percent-encoded one.
        let mut hashed_short = String::from("+");
        for b in Sha256::digest(short.as_bytes()) {
            hashed_short.push_str(&format!("{b:02x}"));
        }
        let dir = root.path().join(hashed_short);
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join(LABEL_FILE), short).expect("label");
        assert_eq!(component_from_dir(&dir).expect("readable"), None);
    }

    #[test]
    fn a_hashed_directory_is_never_shared_or_adopted() {
        let root = tempfile::tempdir().expect("tempdir");
        let syncs = AtomicU64::new(0);
        let name = format!("projects/p/topics/a{}", "%".repeat(90));
        let dir = topic_dir(root.path(), &parse(&name).expect("valid"));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(LABEL_FILE), "another").expect("label");
        assert!(create_topic_dir(root.path(), &name, &syncs).is_err(), "labelled for another name");
        fs::remove_file(dir.join(LABEL_FILE)).expect("rm");
        fs::write(dir.join("00000000000000000000.log"), b"data").expect("segment");
        assert!(create_topic_dir(root.path(), &name, &syncs).is_err(), "unlabelled but not empty");
        fs::remove_file(dir.join("00000000000000000000.log")).expect("rm");
        fs::write(dir.join(LABEL_TEMP_FILE), b"half").expect("leftover");
        create_topic_dir(root.path(), &name, &syncs).expect("an interrupted label is redone");
        assert_eq!(fs::read_to_string(dir.join(LABEL_FILE)).expect("label"), name.rsplit('/').next().expect("id"));
    }
}

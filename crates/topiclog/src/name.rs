//! Topic names and the directories that hold them.
//!
//! A topic `projects/{project}/topics/{topic}` lives in `{dir}/{project}/{topic}/`, each component
//! percent-encoded so that only `[A-Za-z0-9_-]` and `%XX` reach the file system. That rules out
//! `.`, `..`, separators and hidden files, so no name can escape the log directory. The encoding is
//! canonical (one spelling per name), which is checked when directories are read back at open.

use crate::LogError;
use std::path::{Path, PathBuf};

/// Longest file name most file systems accept; an encoded component must fit.
const MAX_COMPONENT_BYTES: usize = 255;

/// The two parts of a valid topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicName<'a> {
    pub project: &'a str,
    pub topic: &'a str,
}

/// Checks `name` against the grammar the rest of Ferrocore uses (see `ferrocore_model::limits`):
/// any project id without whitespace or control characters, and Pub/Sub's topic id rules.
pub(crate) fn parse(name: &str) -> Result<TopicName<'_>, LogError> {
    let invalid = || LogError::InvalidTopic(name.chars().take(300).collect());
    let mut parts = name.split('/');
    let (Some("projects"), Some(project), Some("topics"), Some(topic), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let project_ok = !project.is_empty()
        && !project.chars().any(|c| c.is_control() || c.is_whitespace())
        && encoded_len(project) <= MAX_COMPONENT_BYTES;
    let mut chars = topic.chars();
    let topic_ok = (3..=255).contains(&topic.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !topic.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("goog"))
        && encoded_len(topic) <= MAX_COMPONENT_BYTES;
    if project_ok && topic_ok { Ok(TopicName { project, topic }) } else { Err(invalid()) }
}

/// Where a validated topic keeps its segments.
pub(crate) fn topic_dir(root: &Path, name: &TopicName<'_>) -> PathBuf {
    root.join(encode(name.project)).join(encode(name.topic))
}

/// The topic name stored in `{root}/{project_dir}/{topic_dir}`, if those directory names are the
/// canonical encoding of a valid topic; anything else in the log directory is not ours.
pub(crate) fn from_dirs(project_dir: &str, topic_dir: &str) -> Option<String> {
    let name = format!("projects/{}/topics/{}", decode(project_dir)?, decode(topic_dir)?);
    parse(&name).ok()?;
    Some(name)
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

    #[test]
    fn accepts_valid_names() {
        for name in [
            "projects/p/topics/telemetry",
            "projects/my-project-123/topics/a.b~c+d%e_f-g",
            "projects/example.com:proj/topics/Abc",
            "projects/ü/topics/xyz",
        ] {
            let parsed = parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let dir = topic_dir(Path::new("/log"), &parsed);
            let mut comps = dir.strip_prefix("/log").expect("under root").components();
            let project_dir = comps.next().expect("project").as_os_str().to_str().expect("utf8");
            let topic_dir = comps.next().expect("topic").as_os_str().to_str().expect("utf8");
            assert!(comps.next().is_none());
            assert_eq!(from_dirs(project_dir, topic_dir).as_deref(), Some(name));
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for name in [
            "",
            "topics/t",
            "projects/p/topics/",
            "projects/p/topics/ab",
            "projects/p/topics/goog-x",
            "projects/p/topics/t/x",
            "projects//topics/abc",
            "projects/../topics/abc",
            "projects/p q/topics/abc",
            "projects/p/topics/../../etc",
            "projects/p/topics/9abc",
            "projects/p/topics/abc/",
            "projects/p/subscriptions/abc",
            "projects/p\n/topics/abc",
        ] {
            if name == "projects/../topics/abc" {
                // ".." is a legal project id in the grammar; it must still stay inside the root.
                let parsed = parse(name).expect("grammar allows dots");
                let dir = topic_dir(Path::new("/log"), &parsed);
                assert_eq!(dir, Path::new("/log/%2E%2E/abc"));
                continue;
            }
            assert!(matches!(parse(name), Err(LogError::InvalidTopic(_))), "{name:?}");
        }
        let long = format!("projects/p/topics/a{}", "b".repeat(255));
        assert!(parse(&long).is_err());
        let long_project = format!("projects/{}/topics/abc", ".".repeat(90));
        assert!(parse(&long_project).is_err(), "encoded project longer than a file name");
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
        assert_eq!(from_dirs("p", "ab"), None, "topic id too short");
    }
}

//! `--sink 'TOPICS=URL'` entries: which topics go where.
//!
//! `TOPICS` is a topic name or a glob in which `*` stands for a whole project id or topic id.
//! `{project}` and `{topic}` in the URL are replaced per topic (percent-encoded, so an id with `%`
//! or `+` reaches the destination unchanged once the URL is decoded). Everything is checked at
//! start, without touching the network: the URL is resolved for a sample topic and handed to its
//! kind's `configure`. A sink's name derives from its entry with secrets left out, so it stays the
//! same across restarts (and password rotations) and keeps naming the same saved cursors.

use crate::destination::Destination;
use ferrocore_model::pubsub::TopicName;
use std::fmt;
use std::sync::Arc;

/// Which topics a sink takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    /// `None` for `*`.
    project: Option<String>,
    topic: Option<String>,
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let ["projects", project, "topics", topic] = parts.as_slice() else {
            return Err(format!(
                "'{text}' is not a topic name or pattern: expected projects/PROJECT/topics/TOPIC, where PROJECT or TOPIC may be *"
            ));
        };
        let whole = |part: &str| if part == "*" { None } else { Some(part.to_owned()) };
        let pattern = TopicPattern { project: whole(project), topic: whole(topic) };
        if [project, topic].iter().any(|p| p.contains('*') && **p != "*") {
            return Err(format!("'{text}': a * must stand for a whole project id or topic id, not part of one"));
        }
        // The concrete parts must be what a topic name allows.
        let sample = TopicName::new(
            pattern.project.as_deref().unwrap_or("sample-project"),
            pattern.topic.as_deref().unwrap_or("sample-topic"),
        );
        if let Err(e) = sample {
            return Err(format!("'{text}': {}", e.message));
        }
        Ok(pattern)
    }

    pub fn matches(&self, topic: &TopicName) -> bool {
        self.project.as_deref().is_none_or(|p| p == topic.project())
            && self.topic.as_deref().is_none_or(|t| t == topic.id())
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/topics/{}", self.project.as_deref().unwrap_or("*"), self.topic.as_deref().unwrap_or("*"))
    }
}

/// The systems a sink can forward to, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PubSub,
    Nats,
    Amqp,
    Redis,
    Webhook,
}

impl Kind {
    fn of(scheme: &str) -> Option<Kind> {
        Some(match scheme {
            "pubsub" => Kind::PubSub,
            "nats" => Kind::Nats,
            "amqp" | "amqps" => Kind::Amqp,
            "redis" | "rediss" => Kind::Redis,
            "http" | "https" => Kind::Webhook,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PubSub => "pubsub",
            Kind::Nats => "nats",
            Kind::Amqp => "amqp",
            Kind::Redis => "redis",
            Kind::Webhook => "webhook",
        }
    }

    fn configure(self, url: &url::Url) -> Result<Arc<dyn Destination>, String> {
        match self {
            Kind::PubSub => crate::pubsub::configure(url),
            Kind::Nats => crate::nats::configure(url),
            Kind::Amqp => crate::amqp::configure(url),
            Kind::Redis => crate::redis::configure(url),
            Kind::Webhook => crate::webhook::configure(url),
        }
    }
}

/// One parsed, checked `--sink` entry.
#[derive(Clone)]
pub struct SinkSpec {
    /// `KIND-HASH`, stable for the same topics and URL (secrets aside).
    pub name: String,
    pub pattern: TopicPattern,
    /// The URL as given, `{project}` and `{topic}` unresolved.
    template: String,
    /// The URL with passwords and tokens replaced by `****`: what status and logs show.
    pub redacted: String,
    pub destination: Arc<dyn Destination>,
}

impl fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkSpec")
            .field("name", &self.name)
            .field("pattern", &self.pattern.to_string())
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl SinkSpec {
    /// Parses `TOPICS=URL` (split at the first `=`).
    pub fn parse(entry: &str) -> Result<SinkSpec, String> {
        let entry = entry.trim();
        let Some((topics, template)) = entry.split_once('=') else {
            return Err(format!("'{}' is not TOPICS=URL", redact_text(entry)));
        };
        let pattern = TopicPattern::parse(topics.trim())?;
        let template = template.trim().to_owned();
        let sample = TopicName::new("sample-project", "sample-topic").map_err(|e| e.message)?;
        let url = resolve(&template, &sample)?;
        let kind = Kind::of(url.scheme()).ok_or_else(|| {
            format!(
                "unknown scheme '{}' in {}: expected pubsub, nats, amqp, amqps, redis, rediss, http or https",
                url.scheme(),
                redact(&url)
            )
        })?;
        let destination = kind.configure(&url).map_err(|e| format!("{}: {e}", redact_template(&template)))?;
        let redacted = redact_template(&template);
        let name = format!("{}-{:08x}", kind.as_str(), fnv1a(format!("{pattern}={redacted}").as_bytes()) as u32);
        Ok(SinkSpec { name, pattern, template, redacted, destination })
    }

    /// A sink around any [`Destination`], named `name`: for embedding Ferrocore with a destination
    /// of one's own, and for tests of the forwarder.
    pub fn custom(name: &str, topics: &str, url: &str, destination: Arc<dyn Destination>) -> Result<SinkSpec, String> {
        let pattern = TopicPattern::parse(topics)?;
        let sample = TopicName::new("sample-project", "sample-topic").map_err(|e| e.message)?;
        resolve(url, &sample)?;
        Ok(SinkSpec {
            name: name.to_owned(),
            pattern,
            template: url.to_owned(),
            redacted: redact_template(url),
            destination,
        })
    }

    /// The URL for one topic.
    pub fn url_for(&self, topic: &TopicName) -> Result<url::Url, String> {
        resolve(&self.template, topic)
    }
}

/// Parses every entry and refuses two that would share a name (the same topics and URL twice).
pub fn parse_all<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Vec<SinkSpec>, String> {
    let mut specs: Vec<SinkSpec> = Vec::new();
    for entry in entries {
        let spec = SinkSpec::parse(entry)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(format!("{}={} is given twice", spec.pattern, spec.redacted));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Replaces `{project}` and `{topic}` and parses the result.
fn resolve(template: &str, topic: &TopicName) -> Result<url::Url, String> {
    let text = template.replace("{project}", &encode(topic.project())).replace("{topic}", &encode(topic.id()));
    url::Url::parse(&text).map_err(|e| format!("'{}' is not a valid URL: {e}", redact_text(template)))
}

/// Percent-encodes all but the unreserved characters.
fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query parameters whose values are secrets, by the names URLs commonly give them. Exact names,
/// not substrings: `routing_key` or `auth_mechanism` are settings that must stay readable (and
/// tell sinks apart, since a sink's name derives from the redacted URL).
fn secret_param(key: &str) -> bool {
    const SECRET: &[&str] = &[
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "auth_token",
        "api_key",
        "apikey",
        "key",
        "sig",
        "signature",
        "credentials",
    ];
    let k = key.to_ascii_lowercase();
    SECRET.contains(&k.as_str())
}

/// The URL with its password and secret query values replaced by `****`.
pub fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("****"));
    }
    if url.query_pairs().any(|(k, _)| secret_param(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) { "****".to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// [`redact`] for a template, whose placeholders stay readable.
fn redact_template(template: &str) -> String {
    match url::Url::parse(template) {
        Ok(u) => redact(&u).replace("%7Bproject%7D", "{project}").replace("%7Btopic%7D", "{topic}"),
        Err(_) => redact_text(template),
    }
}

/// For text that does not even parse as a URL: keep the scheme and host part, drop what could be
/// a password.
fn redact_text(text: &str) -> String {
    match text.find('@') {
        Some(at) => match text.find("://") {
            Some(s) if s < at => format!("{}://****{}", &text[..s], &text[at..]),
            _ => "****".to_owned(),
        },
        None => text.to_owned(),
    }
}

/// FNV-1a: a stable hash (the standard library's is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(p: &str, t: &str) -> TopicName {
        TopicName::new(p, t).unwrap()
    }

    #[test]
    fn patterns_match_whole_ids_only() {
        let any = TopicPattern::parse("projects/*/topics/*").unwrap();
        let project = TopicPattern::parse("projects/my-project/topics/*").unwrap();
        let named = TopicPattern::parse("projects/*/topics/telemetry").unwrap();
        let exact = TopicPattern::parse("projects/p1/topics/state").unwrap();
        assert!(any.matches(&topic("x", "abc")));
        assert!(project.matches(&topic("my-project", "abc")) && !project.matches(&topic("other", "abc")));
        assert!(named.matches(&topic("a", "telemetry")) && !named.matches(&topic("a", "telemetry2")));
        assert!(exact.matches(&topic("p1", "state")) && !exact.matches(&topic("p2", "state")));
        assert_eq!(named.to_string(), "projects/*/topics/telemetry");
        for bad in [
            "projects/p*/topics/t",
            "projects/*/topics/tele*",
            "projects/*",
            "projects/*/topics/*/x",
            "*",
            "topics/t",
            "projects/p/topics/ab",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
        let e = TopicPattern::parse("projects/*/topics/tele*").unwrap_err();
        assert!(e.contains("whole project id or topic id"), "{e}");
    }

    #[test]
    fn urls_are_resolved_per_topic_and_encoded() {
        let spec = SinkSpec::parse("projects/*/topics/*=http://127.0.0.1:9/hook/{project}/{topic}?x=1").unwrap();
        let url = spec.url_for(&topic("p1", "a+b%c")).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/hook/p1/a%2Bb%25c?x=1");
        assert!(spec.name.starts_with("webhook-"), "{}", spec.name);
    }

    #[test]
    fn bad_entries_are_refused_with_the_problem() {
        let cases = [
            ("no-equals", "not TOPICS=URL"),
            ("projects/*/topics/*=ftp://host/x", "unknown scheme 'ftp'"),
            ("projects/*/topics/*=not a url", "not a valid URL"),
            ("projects/x*/topics/*=http://h/", "whole project id"),
        ];
        for (entry, want) in cases {
            let e = SinkSpec::parse(entry).unwrap_err();
            assert!(e.contains(want), "{entry}: {e}");
        }
        let twice = parse_all(["projects/*/topics/*=http://h:1/a", "projects/*/topics/*=http://h:1/a"]).unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
    }

    #[test]
    fn secrets_never_show() {
        let u =
            url::Url::parse("amqp://user:s3cret@h:5672/v?exchange=e&routing_key=k&password=p2&token_file=/x").unwrap();
        let r = redact(&u);
        assert!(!r.contains("s3cret") && !r.contains("p2"), "{r}");
        assert!(r.contains("user:****@") && r.contains("token_file=%2Fx"), "{r}");
        assert_eq!(redact_text("nats://u:pw@h x"), "nats://****@h x");
        let e = SinkSpec::parse("projects/*/topics/*=gopher://u:pw@h/").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
        // Settings that merely end in "key" stay readable and keep sinks apart.
        let first = SinkSpec::parse("projects/a/topics/*=amqp://g:g@h:5672/%2f?exchange=e&routing_key=first").unwrap();
        let second =
            SinkSpec::parse("projects/a/topics/*=amqp://g:g@h:5672/%2f?exchange=e&routing_key=second").unwrap();
        assert!(first.redacted.ends_with("routing_key=first"), "{}", first.redacted);
        assert_ne!(first.name, second.name);
        // The name ignores the password, so rotating it keeps the saved cursors.
        let a = SinkSpec::parse("projects/*/topics/*=redis://:one@127.0.0.1:6379?stream=s").unwrap();
        let b = SinkSpec::parse("projects/*/topics/*=redis://:two@127.0.0.1:6379?stream=s").unwrap();
        assert_eq!(a.name, b.name);
        assert!(!a.redacted.contains("one"), "{}", a.redacted);
    }
}

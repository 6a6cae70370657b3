//! The Ferrocore REST calls the bench needs: registries, devices, commands, device lists, and
//! reading a topic of the embedded topic log back.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A REST client for one Ferrocore, one project and one location.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    pub project: String,
    pub location: String,
}

/// What a create returned: made now, or there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// One message read from a topic.
pub struct LogMessage {
    pub data: Vec<u8>,
}

impl Api {
    pub fn new(base: &str, token: String, project: &str, location: &str) -> Result<Self> {
        let url = reqwest::Url::parse(base).with_context(|| format!("'{base}' is not a URL"))?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            bail!("{base} is not on a loopback address; this tool only targets 127.0.0.0/8, ::1 and localhost");
        }
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).tcp_nodelay(true).build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            project: project.to_owned(),
            location: location.to_owned(),
        })
    }

    /// The admin token the bench calls with.
    pub fn token(&self) -> Option<&str> {
        Some(&self.token)
    }

    pub fn registry_path(&self, registry: &str) -> String {
        format!("projects/{}/locations/{}/registries/{registry}", self.project, self.location)
    }

    pub fn device_path(&self, registry: &str, device: &str) -> String {
        format!("{}/devices/{device}", self.registry_path(registry))
    }

    pub fn topic_name(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, format!("{}/v1/{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    fn fail(what: &str, status: StatusCode, body: &Value) -> anyhow::Error {
        anyhow!("{what}: HTTP {status}: {}", body["error"]["message"].as_str().unwrap_or("no error message"))
    }

    /// Checks the token with a cheap admin call.
    pub async fn check(&self) -> Result<()> {
        let path = format!("projects/{}/locations/{}/registries?pageSize=1", self.project, self.location);
        let (s, body) = self.call(reqwest::Method::GET, &path, None).await?;
        if !s.is_success() {
            return Err(Self::fail("the admin API refused the bench", s, &body));
        }
        Ok(())
    }

    /// Creates a registry whose telemetry goes to `topic` (a topic id in the same project).
    pub async fn create_registry(&self, registry: &str, topic: &str) -> Result<Created> {
        let body = json!({
            "id": registry,
            "eventNotificationConfigs": [{"pubsubTopicName": self.topic_name(topic)}],
        });
        let path = format!("projects/{}/locations/{}/registries", self.project, self.location);
        let (s, body) = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
        match s {
            StatusCode::OK => Ok(Created::New),
            StatusCode::CONFLICT => Ok(Created::Existing),
            s => Err(Self::fail("registry create", s, &body)),
        }
    }

    /// Creates a device with one public key credential (or none).
    pub async fn create_device(&self, registry: &str, id: &str, key: Option<(&str, &str)>) -> Result<Created> {
        let mut body = json!({"id": id});
        if let Some((format, pem)) = key {
            body["credentials"] = json!([{"publicKey": {"format": format, "key": pem}}]);
        }
        let path = format!("{}/devices", self.registry_path(registry));
        let (s, body) = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
        match s {
            StatusCode::OK => Ok(Created::New),
            StatusCode::CONFLICT => Ok(Created::Existing),
            s => Err(Self::fail("device create", s, &body)),
        }
    }

    pub async fn get_device(&self, registry: &str, id: &str) -> Result<()> {
        let (s, body) = self.call(reqwest::Method::GET, &self.device_path(registry, id), None).await?;
        if s != StatusCode::OK {
            return Err(Self::fail("device get", s, &body));
        }
        Ok(())
    }

    /// One page of devices: how many it held and the next page token ("" at the end).
    pub async fn list_devices(&self, registry: &str, page_size: u32, token: &str) -> Result<(usize, String)> {
        let mut path = format!("{}/devices?pageSize={page_size}", self.registry_path(registry));
        if !token.is_empty() {
            path.push_str("&pageToken=");
            path.push_str(token);
        }
        let (s, body) = self.call(reqwest::Method::GET, &path, None).await?;
        if s != StatusCode::OK {
            return Err(Self::fail("device list", s, &body));
        }
        let n = body["devices"].as_array().map_or(0, Vec::len);
        Ok((n, body["nextPageToken"].as_str().unwrap_or("").to_owned()))
    }

    /// sendCommandToDevice; returns once the server answered (for QoS 1 subscribers, after the
    /// device's PUBACK).
    pub async fn send_command(&self, registry: &str, device: &str, data: &[u8]) -> Result<()> {
        let path = format!("{}:sendCommandToDevice", self.device_path(registry, device));
        let body = json!({"binaryData": STANDARD.encode(data)});
        let (s, body) = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
        if s != StatusCode::OK {
            return Err(Self::fail("sendCommandToDevice", s, &body));
        }
        Ok(())
    }

    /// The next offset of a topic (0 when it holds nothing yet).
    pub async fn topic_end(&self, topic: &str) -> Result<u64> {
        let name = self.topic_name(topic);
        // `GET .../topics/T/extent` where the server has it (`GET .../topics` became Pub/Sub's
        // ListTopics); otherwise the older topic-log listing below.
        let (s, body) = self.call(reqwest::Method::GET, &format!("{name}/extent"), None).await?;
        if s == StatusCode::OK {
            return body["nextOffset"]
                .as_str()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| anyhow!("topic {name}: the extent has no nextOffset"));
        }
        let mut token = String::new();
        for _ in 0..1000 {
            let mut path = format!("projects/{}/topics", self.project);
            if !token.is_empty() {
                path.push_str(&format!("?pageToken={token}"));
            }
            let (s, body) = self.call(reqwest::Method::GET, &path, None).await?;
            if s != StatusCode::OK {
                return Err(Self::fail("topic list", s, &body));
            }
            for t in body["topics"].as_array().into_iter().flatten() {
                if t["name"].as_str() == Some(name.as_str()) {
                    return t["nextOffset"]
                        .as_str()
                        .and_then(|o| o.parse().ok())
                        .ok_or_else(|| anyhow!("topic {name} has no nextOffset"));
                }
            }
            match body["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_owned(),
                _ => return Ok(0),
            }
        }
        Ok(0)
    }

    /// Reads up to `max` messages from `offset`, waiting up to `wait_seconds` for the first.
    /// Returns them and the offset to continue from.
    pub async fn read_topic(
        &self,
        topic: &str,
        offset: u64,
        max: u32,
        wait_seconds: u32,
    ) -> Result<(Vec<LogMessage>, u64)> {
        let path = format!(
            "projects/{}/topics/{topic}/messages?offset={offset}&maxMessages={max}&waitSeconds={wait_seconds}",
            self.project
        );
        let (s, body) = self.call(reqwest::Method::GET, &path, None).await?;
        if s != StatusCode::OK {
            return Err(Self::fail("topic read", s, &body));
        }
        let next = body["nextOffset"]
            .as_str()
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| anyhow!("the topic read has no nextOffset"))?;
        let mut out = Vec::new();
        for m in body["messages"].as_array().into_iter().flatten() {
            let data = STANDARD.decode(m["data"].as_str().unwrap_or_default()).context("message data is not base64")?;
            out.push(LogMessage { data });
        }
        Ok((out, next))
    }
}

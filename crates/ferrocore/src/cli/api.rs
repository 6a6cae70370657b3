//! The REST client every command shares: where the server is, which admin token to send, how
//! resource names are spelled from short ids, and Google's error body turned into one line.
//!
//! Requests and answers are the API's typed messages ([`ferrocore_proto`], with Google's JSON
//! mapping, the very types the server reads and writes), so a field renamed there breaks this
//! build rather than a user's command. Only the Ferrocore-only endpoints, which have no such
//! message, are read as plain JSON.

use anyhow::{Context, Result, bail};
use clap::Args;
use ferrocore_proto::{iot, pubsub};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;

/// How to reach a running server. The defaults work on the machine that runs `ferrocore serve`
/// from the same directory.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of the server's REST API.
    #[arg(long, env = "FERROCORE_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// Admin token; by default FERROCORE_TOKEN, else DATA_DIR/admin-token.
    #[arg(long, env = "FERROCORE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Data directory to read the admin token from when none is given.
    #[arg(long, env = "FERROCORE_DATA_DIR", default_value = "./ferrocore-data", global = true)]
    pub data_dir: PathBuf,
    /// PEM file of the CA certificates to trust for an `https://` --server, instead of the
    /// system's roots (e.g. DATA_DIR/tls/ca.pem, or the CA of a TLS-terminating proxy).
    #[arg(long, env = "FERROCORE_CA_FILE", global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

impl Connection {
    pub fn token(&self) -> Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join(crate::secrets::TOKEN_FILE);
        crate::secrets::read_secret_file(&path)
            .with_context(|| format!("no --token or FERROCORE_TOKEN given, and {} is not readable", path.display()))
    }

    pub fn api(&self) -> Result<Api> {
        Ok(Api {
            http: self.http_client()?,
            base: self.server.trim_end_matches('/').to_owned(),
            token: self.token()?,
            ca_file: self.ca_file.clone(),
        })
    }

    /// The HTTP client every command uses: rustls, trusting `--ca-file` alone when it is given,
    /// else the system's roots.
    pub fn http_client(&self) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {} (--ca-file)", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .with_context(|| format!("{} (--ca-file) holds no PEM certificate", path.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        builder.build().map_err(|e| match &self.ca_file {
            Some(path) => anyhow::anyhow!("cannot use the CA file {} (--ca-file): {}", path.display(), causes(&e)),
            None => anyhow::anyhow!("cannot set up the HTTP client: {}", causes(&e)),
        })
    }

    /// A failed request to this server, worded by [`request_error`].
    pub fn send_error(&self, e: reqwest::Error) -> anyhow::Error {
        request_error(&self.server, self.ca_file.as_deref(), e)
    }
}

/// A failed request as a user should read it: a TLS refusal says what was wrong with the server's
/// certificate and what to do; anything else, that the server could not be reached.
pub fn request_error(server: &str, ca_file: Option<&std::path::Path>, e: reqwest::Error) -> anyhow::Error {
    {
        let tls = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| e.source()).find_map(|c| {
            // rustls's error comes up the chain as itself, or inside (io::Errors inside) io::Errors,
            // whose source() skips what they wrap.
            let mut c: &(dyn std::error::Error + 'static) = c;
            while let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                c = inner;
            }
            c.downcast_ref::<tokio_rustls::rustls::Error>()
        });
        match tls {
            Some(tokio_rustls::rustls::Error::InvalidCertificate(why)) => {
                let trust = match ca_file {
                    Some(path) => format!("the CA file {} does not vouch for it", path.display()),
                    None => "give the CA that signed it with --ca-file (or FERROCORE_CA_FILE)".to_owned(),
                };
                anyhow::anyhow!("cannot reach {server}: its TLS certificate is refused ({}); {trust}", certificate(why))
            }
            Some(other) => anyhow::anyhow!("cannot reach {server}: the TLS handshake failed ({other})"),
            None => anyhow::anyhow!("cannot reach {server}: {}", causes(&e)),
        }
    }
}

/// What is wrong with a refused server certificate, in words.
fn certificate(e: &tokio_rustls::rustls::CertificateError) -> String {
    use tokio_rustls::rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "signed by an unknown authority".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => "not issued for this host name".to_owned(),
        C::Expired | C::ExpiredContext { .. } => "expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".to_owned(),
        C::BadSignature => "bad signature".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// An error and its causes on one line, without repeating the ones that only echo their source.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(c) = next {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = c.source();
    }
    parts.join(": ")
}

/// Where registries live: `--project` and `--region`, or full resource names instead.
#[derive(Args, Debug, Clone)]
pub struct Location {
    /// Project id; not needed when resources are given by their full name.
    #[arg(long, env = "FERROCORE_PROJECT", global = true)]
    pub project: Option<String>,
    /// Location (Cloud IoT region) of the registries.
    #[arg(long, env = "FERROCORE_REGION", default_value = "us-central1", global = true)]
    pub region: String,
}

impl Location {
    pub fn project(&self) -> Result<&str> {
        self.project.as_deref().context("no project: give --project (or FERROCORE_PROJECT), or a full resource name")
    }

    /// `projects/P/locations/L`.
    pub fn parent(&self) -> Result<String> {
        Ok(format!("projects/{}/locations/{}", self.project()?, self.region))
    }

    /// A registry from its id or its full name.
    pub fn registry(&self, id_or_name: &str) -> Result<String> {
        if id_or_name.starts_with("projects/") {
            return full_name(id_or_name, &["projects", "locations", "registries"]);
        }
        no_slash("registry", id_or_name)?;
        Ok(format!("{}/registries/{id_or_name}", self.parent()?))
    }
}

/// Where devices live: a [`Location`] and `--registry`.
#[derive(Args, Debug, Clone)]
pub struct Registry {
    #[command(flatten)]
    pub location: Location,
    /// Registry id (or full registry name); not needed when devices are given by their full name.
    #[arg(long, env = "FERROCORE_REGISTRY", global = true)]
    pub registry: Option<String>,
}

impl Registry {
    pub fn name(&self) -> Result<String> {
        let r = self.registry.as_deref().context("no registry: give --registry (or FERROCORE_REGISTRY)")?;
        self.location.registry(r)
    }

    /// A device from its id (or numeric id) or its full name.
    pub fn device(&self, id_or_name: &str) -> Result<String> {
        if id_or_name.starts_with("projects/") {
            return full_name(id_or_name, &["projects", "locations", "registries", "devices"]);
        }
        no_slash("device", id_or_name)?;
        Ok(format!("{}/devices/{id_or_name}", self.name()?))
    }
}

pub fn no_slash(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.contains('/') {
        bail!("'{id}' is neither a {what} id nor a full name starting with projects/");
    }
    Ok(())
}

/// Checks that `name` is `kinds[0]/X/kinds[1]/Y/...` with every id present.
pub fn full_name(name: &str, kinds: &[&str]) -> Result<String> {
    let segs: Vec<&str> = name.split('/').collect();
    let ok = segs.len() == kinds.len() * 2
        && segs.chunks(2).zip(kinds).all(|(pair, kind)| pair[0] == *kind && !pair[1].is_empty());
    if !ok {
        let shape: Vec<String> = kinds.iter().map(|k| format!("{k}/{}", &k[..1].to_uppercase())).collect();
        bail!("'{name}' is not a name like {}", shape.join("/"));
    }
    Ok(name.to_owned())
}

/// The last id of a resource name.
pub fn last_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// An error answer of the server, in Google's `{"error": {"code", "status", "message"}}` shape.
#[derive(Debug)]
pub struct ApiError {
    pub http: u16,
    pub status: String,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The HTTP status of an API failure, when the server answered at all.
pub fn http_status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<ApiError>().map(|e| e.http)
}

/// An authenticated client of the REST API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    ca_file: Option<PathBuf>,
}

impl Api {
    /// `GET /v1/{name}{suffix}?{query}`.
    pub async fn get<T: DeserializeOwned>(&self, name: &str, suffix: &str, query: &[(&str, String)]) -> Result<T> {
        self.send(reqwest::Method::GET, name, suffix, query, None::<&()>).await
    }

    pub async fn post<T: DeserializeOwned>(&self, name: &str, suffix: &str, body: &impl Serialize) -> Result<T> {
        self.send(reqwest::Method::POST, name, suffix, &[], Some(body)).await
    }

    /// `PUT /v1/{name}`: Pub/Sub creates topics and subscriptions at their own names.
    pub async fn put<T: DeserializeOwned>(&self, name: &str, body: &impl Serialize) -> Result<T> {
        self.send(reqwest::Method::PUT, name, "", &[], Some(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        name: &str,
        query: &[(&str, String)],
        body: &impl Serialize,
    ) -> Result<T> {
        self.send(reqwest::Method::PATCH, name, "", query, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.send(reqwest::Method::DELETE, name, "", &[], None::<&()>).await
    }

    /// Every item of a paged list, following `nextPageToken`; stops early at `limit` items.
    pub async fn list_all<P: Page>(
        &self,
        name: &str,
        suffix: &str,
        query: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<P::Item>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = query.to_vec();
            q.push(("pageSize", "1000".into()));
            if !token.is_empty() {
                q.push(("pageToken", token.clone()));
            }
            let (items, next) = self.get::<P>(name, suffix, &q).await?.split();
            out.extend(items);
            if limit.is_some_and(|l| out.len() >= l) {
                out.truncate(limit.unwrap_or(usize::MAX));
                return Ok(out);
            }
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        name: &str,
        suffix: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let mut url = format!("{}/v1/{}{suffix}", self.base, encode_path(name));
        if !query.is_empty() {
            let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v, b""))).collect();
            url = format!("{url}?{}", pairs.join("&"));
        }
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| request_error(&self.base, self.ca_file.as_deref(), e))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("cannot read the answer of {}", self.base))?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) if status.is_success() && text.trim().is_empty() => Value::Object(Default::default()),
            Err(_) => {
                bail!("the server answered HTTP {} without a JSON body (is {} a Ferrocore server?)", status, self.base)
            }
        };
        if status.is_success() {
            // The typed messages refuse fields they do not know, so an answer is never cut short
            // silently: it is read whole or not at all.
            return serde_json::from_value(value).with_context(|| {
                format!("the answer of {} is not what this client expects (a different Ferrocore version?)", self.base)
            });
        }
        let e = &value["error"];
        Err(ApiError {
            http: status.as_u16(),
            status: e["status"].as_str().unwrap_or(status.canonical_reason().unwrap_or("ERROR")).to_owned(),
            message: e["message"].as_str().unwrap_or("the request failed").to_owned(),
        }
        .into())
    }
}

/// A page of a paged list: its items, and the token of the next page ("" after the last).
pub trait Page: DeserializeOwned {
    type Item;
    fn split(self) -> (Vec<Self::Item>, String);
}

macro_rules! page {
    ($($page:ty => $items:ident: $item:ty),* $(,)?) => {$(
        impl Page for $page {
            type Item = $item;
            fn split(self) -> (Vec<$item>, String) {
                (self.$items, self.next_page_token)
            }
        }
    )*};
}

page! {
    iot::ListDeviceRegistriesResponse => device_registries: iot::DeviceRegistry,
    iot::ListDevicesResponse => devices: iot::Device,
    pubsub::ListTopicsResponse => topics: pubsub::Topic,
    pubsub::ListSubscriptionsResponse => subscriptions: pubsub::Subscription,
}

/// Percent-encodes each segment of a resource name: ids may hold `%`, `+` or `~`, and a project
/// may hold `:`, which the server would otherwise read as a custom verb. `@` (legal in a path
/// segment) stays as it is: service accounts are named by their email.
fn encode_path(name: &str) -> String {
    name.split('/').map(|s| encode(s, b"@")).collect::<Vec<_>>().join("/")
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `keep`.
fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(project: Option<&str>) -> Location {
        Location { project: project.map(str::to_owned), region: "us-central1".into() }
    }

    #[test]
    fn names_from_ids_or_full_names() {
        let r = Registry { location: loc(Some("p")), registry: Some("reg".into()) };
        assert_eq!(r.device("d1").unwrap(), "projects/p/locations/us-central1/registries/reg/devices/d1");
        let full = "projects/x/locations/eu/registries/r/devices/d";
        assert_eq!(r.device(full).unwrap(), full);
        assert!(r.device("projects/x/locations/eu/registries/r").is_err());
        assert!(r.device("a/b").is_err());
        let none = Registry { location: loc(None), registry: Some("reg".into()) };
        assert!(none.device("d").unwrap_err().to_string().contains("--project"));
        assert!(none.device(full).is_ok(), "a full name needs no project");
        assert_eq!(last_id(full), "d");
    }

    #[test]
    fn encoding_keeps_verbs_apart() {
        assert_eq!(encode_path("projects/acme.com:p/locations/l"), "projects/acme.com%3Ap/locations/l");
        assert_eq!(encode("a%b+c d~", b""), "a%25b%2Bc%20d~");
        assert_eq!(
            encode_path("projects/p/serviceAccounts/b@p.iam.gserviceaccount.com"),
            "projects/p/serviceAccounts/b@p.iam.gserviceaccount.com"
        );
    }
}

//! gRPC clients for Google's Pub/Sub v1 API (the tonic code generated in ferrocore-proto), as a
//! back end uses them: one HTTP/2 connection per channel, h2c or TLS, and the admin token (when
//! there is one) as `authorization: Bearer` metadata. Shared with `examples/pubsub-drain.rs`,
//! so it depends on nothing else in this crate.

use anyhow::{Context, Result, anyhow, bail};
use ferrocore_proto::pubsub::publisher_client::PublisherClient;
use ferrocore_proto::pubsub::subscriber_client::SubscriberClient;
use std::path::Path;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Adds the bearer token to every call (none: anonymous, as emulator clients are).
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Subscriber = SubscriberClient<InterceptedService<Channel, Auth>>;
#[allow(dead_code)] // used by examples/pubsub-drain.rs
pub type Publisher = PublisherClient<InterceptedService<Channel, Auth>>;

/// Where a Pub/Sub API listens and how to authenticate.
#[derive(Clone)]
pub struct Target {
    endpoint: Endpoint,
    auth: Auth,
}

impl Target {
    /// `url` is `http://HOST:PORT` (h2c) or `https://HOST:PORT` (TLS, trusting `ca`, expecting
    /// the certificate to name `tls_name`). Only loopback hosts are accepted.
    pub fn new(url: &str, token: Option<&str>, ca: Option<&Path>, tls_name: &str) -> Result<Self> {
        let uri: tonic::codegen::http::Uri = url.parse().with_context(|| format!("'{url}' is not a URL"))?;
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            bail!("{url} is not on a loopback address; this tool only targets 127.0.0.0/8, ::1 and localhost");
        }
        let mut endpoint = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true);
        if uri.scheme_str() == Some("https") {
            let mut tls = ClientTlsConfig::new().domain_name(tls_name.to_owned());
            match ca {
                Some(ca) => {
                    let pem = std::fs::read(ca).with_context(|| format!("cannot read the CA file {}", ca.display()))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => bail!("{url} is TLS: pass --ca (or --data-dir) to trust its certificate"),
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let auth = match token {
            Some(t) => Some(
                format!("Bearer {t}").parse::<MetadataValue<Ascii>>().map_err(|_| anyhow!("the token is not ASCII"))?,
            ),
            None => None,
        };
        Ok(Self { endpoint, auth: Auth(auth) })
    }

    /// A new connection.
    pub async fn channel(&self) -> Result<Channel> {
        self.endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the Pub/Sub API at {}", self.endpoint.uri()))
    }

    pub fn subscriber(&self, channel: Channel) -> Subscriber {
        SubscriberClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    #[allow(dead_code)] // used by examples/pubsub-drain.rs
    pub fn publisher(&self, channel: Channel) -> Publisher {
        PublisherClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

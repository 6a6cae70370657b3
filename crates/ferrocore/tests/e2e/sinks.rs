//! External sinks through the whole server: a webhook sink (a real HTTP receiver in this test)
//! gets what is published to the topics it takes, in Pub/Sub's push format; `GET /v1/sinks`
//! reports it and needs the admin token; a restart on the same data resumes without replaying.
//! Each bus kind has its own tests in crates/sinks and tests/compat/test_sinks.py.

use crate::harness::{TestServer, expect_error};
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP receiver answering 204 and keeping every (path and query, JSON body).
pub(crate) struct Receiver {
    pub(crate) url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let keep = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let keep = keep.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            keep.lock().unwrap().push((target, value));
                            let empty = http_body_util::Empty::<bytes::Bytes>::new();
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder().status(204).body(empty).unwrap(),
                            )
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Receiver { url, got, task }
    }

    pub(crate) fn got(&self) -> Vec<(String, Value)> {
        self.got.lock().unwrap().clone()
    }

    pub(crate) async fn until_count(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.got().len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} pushes arrived", self.got().len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub(crate) async fn publish(s: &TestServer, topic: &str, texts: &[&str]) {
    let messages: Vec<Value> =
        texts.iter().map(|t| json!({"data": b64(t.as_bytes()), "attributes": {"n": t}})).collect();
    let (st, body) = s.post(&format!("{topic}:publish"), json!({ "messages": messages })).await;
    assert_eq!(st, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_sinks_list_needs_the_admin_token_and_is_empty_without_sinks() {
    let s = TestServer::start().await;
    let (st, body) = s.call_as(None, Method::GET, "sinks", None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (st, body) = s.call_as(Some("Bearer not-the-token-at-all"), Method::GET, "sinks", None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (st, body) = s.get("sinks").await;
    assert_eq!((st, body), (StatusCode::OK, json!({"sinks": []})));
    let (st, body) = s.post("sinks", json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn a_webhook_sink_gets_its_topics_in_push_format_and_resumes_after_a_restart() {
    let hook = Receiver::start().await;
    let entry = format!("projects/e2e-sinks/topics/*={}/push/{{topic}}?k=v", hook.url);
    let spec = ferrocore_sinks::spec::SinkSpec::parse(&entry).unwrap();
    let name = spec.name.clone();
    let configure = |c: &mut ferrocore::server::Config| c.sinks = vec![spec.clone()];
    let s = TestServer::start_configured(|_| None, configure).await;
    let topic = "projects/e2e-sinks/topics/readings";
    let other = "projects/e2e-other/topics/readings";
    for t in [topic, other] {
        let (st, body) = s.put(t, json!({})).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    publish(&s, topic, &["one", "two", "three"]).await;
    publish(&s, other, &["not taken"]).await;
    hook.until_count(3).await;

    let got = hook.got();
    for (i, (target, push)) in got.iter().enumerate() {
        assert_eq!(target, "/push/readings?k=v");
        let m = &push["message"];
        let text = ["one", "two", "three"][i];
        assert_eq!(m["data"], b64(text.as_bytes()), "{push}");
        assert_eq!(m["attributes"]["n"], text);
        assert_eq!(m["attributes"]["ferrocoreTopic"], topic);
        assert_eq!(m["attributes"]["ferrocoreOffset"], i.to_string());
        assert_eq!(m["messageId"], i.to_string());
        assert!(m["publishTime"].as_str().unwrap().ends_with('Z'), "{push}");
        assert_eq!(push["subscription"], format!("projects/e2e-sinks/subscriptions/{name}"));
    }

    let (st, list) = s.get("sinks").await;
    assert_eq!(st, StatusCode::OK);
    let sink = &list["sinks"][0];
    assert_eq!(sink["name"], name.as_str());
    assert_eq!(sink["topics"], "projects/e2e-sinks/topics/*");
    assert_eq!(sink["url"], format!("{}/push/{{topic}}?k=v", hook.url));
    assert_eq!(sink["state"], "ok");
    assert_eq!(sink["cursor"], json!({ topic: "3" }));
    assert_eq!((&sink["lagMessages"], &sink["forwardedMessages"]), (&json!("0"), &json!("3")));

    // Published while the server is down: forwarded after the restart, and nothing twice.
    let dir = s.stop_keeping_data().await;
    let s = TestServer::start_in(dir, |_| None, configure).await;
    publish(&s, topic, &["four"]).await;
    hook.until_count(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = hook.got();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3].1["message"]["attributes"]["ferrocoreOffset"], "3");
    s.stop().await;
    hook.task.abort();
}

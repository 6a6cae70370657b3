//! The webhook destination against a real HTTP server (axum on 127.0.0.1):
//!
//! * each message is one POST in Pub/Sub's push format (base64 data, IoT Core's attributes plus
//!   `ferrocoreTopic`/`ferrocoreOffset`, both spellings of the id and time, the subscription), in
//!   order, on one kept-alive connection, with the bearer token from `token_file`, which is not
//!   forwarded while the other query parameters are;
//! * an answer other than 2xx stops the batch with the confirmed prefix, and a retry of the rest
//!   delivers it;
//! * a server that is down fails the delivery at once, and one restarted on the same port takes
//!   messages again;
//! * configure() rejects unusable token files, naming the file and never its content.

mod hooks;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine as _;
use ferrocore_sinks::webhook;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use url::Url;

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    peer: SocketAddr,
    uri: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Bytes,
    status: u16,
}

/// What the server answers, and what it saw.
#[derive(Clone, Default)]
struct Hook {
    /// 1-based numbers of the requests answered with 500.
    failing: Arc<Vec<usize>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hook {
    fn failing(numbers: &[usize]) -> Hook {
        Hook { failing: Arc::new(numbers.to_vec()), ..Hook::default() }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The offsets (`messageId`) of the requests answered with 2xx, in arrival order.
    fn accepted(&self) -> Vec<u64> {
        self.seen()
            .iter()
            .filter(|s| s.status < 300)
            .map(|s| {
                let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
                body["message"]["messageId"].as_str().unwrap().parse().unwrap()
            })
            .collect()
    }
}

async fn answer(
    State(hook): State<Hook>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut seen = hook.seen.lock().unwrap();
    let number = seen.len() + 1;
    let status =
        if hook.failing.contains(&number) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT };
    let header = |name| headers.get(name).map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned());
    seen.push(Seen {
        peer,
        uri: uri.to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body,
        status: status.as_u16(),
    });
    status
}

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(addr: SocketAddr, hook: Hook) -> Server {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(answer).with_state(hook);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server { addr, stop, task }
    }

    /// Closes the listener and every connection.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("the server stops").unwrap();
    }
}

async fn any_port(hook: Hook) -> Server {
    Server::start("127.0.0.1:0".parse().unwrap(), hook).await
}

fn encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn posts_each_message_in_push_format_with_the_token_and_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("webhook token");
    std::fs::write(&token_path, "  s3cret-token-value \n").unwrap();
    let hook = Hook::default();
    let server = any_port(hook.clone()).await;
    let url = Url::parse(&format!(
        "http://{}/push/iot-project/telemetry-events?x=1&token_file={}&y=a%20b#ignored",
        server.addr,
        encoded(&token_path.to_string_lossy())
    ))
    .unwrap();

    let destination = webhook::configure(&url).unwrap();
    let source = hooks::source();
    let mut target = destination.open(&url, &source).await.unwrap();
    target.deliver(&source, &hooks::batch(0..20)).await.unwrap();
    target.deliver(&source, &hooks::batch(20..25)).await.unwrap();

    let seen = hook.seen();
    assert_eq!(seen.len(), 25);
    for (i, s) in seen.iter().enumerate() {
        let offset = i as u64;
        assert_eq!(s.uri, "/push/iot-project/telemetry-events?x=1&y=a%20b", "token_file is not forwarded");
        assert_eq!(s.authorization.as_deref(), Some("Bearer s3cret-token-value"));
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["subscription"], "projects/iot-project/subscriptions/webhook-test");
        let m = &body["message"];
        let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["attributes", "data", "messageId", "message_id", "publishTime", "publish_time"]);
        let data = base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, hooks::payload(offset), "message {i} in order, payload unchanged");
        assert_eq!(hooks::string_map(&m["attributes"]), hooks::expected_attributes(offset));
        assert_eq!(m["messageId"], offset.to_string());
        assert_eq!(m["message_id"], offset.to_string());
        let time =
            if offset == 0 { "2023-11-14T22:13:20Z".to_owned() } else { format!("2023-11-14T22:13:20.{offset:09}Z") };
        assert_eq!(m["publishTime"], time);
        assert_eq!(m["publish_time"], time);
        let parsed = time::OffsetDateTime::parse(&time, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(parsed.unix_timestamp_nanos(), i128::from(hooks::time_of(offset).nanos()));
    }
    assert!(seen.iter().all(|s| s.peer == seen[0].peer), "one kept-alive connection for every request");
    server.stop().await;
}

#[tokio::test]
async fn an_error_answer_stops_the_batch_and_a_retry_delivers_the_rest() {
    // The 4th and 5th requests are answered with 500.
    let hook = Hook::failing(&[4, 5]);
    let server = any_port(hook.clone()).await;
    let url = Url::parse(&format!("http://{}/hook?key=value", server.addr)).unwrap();
    let destination = webhook::configure(&url).unwrap();
    let source = hooks::source();
    let batch = hooks::batch(100..110);

    let mut target = destination.open(&url, &source).await.unwrap();
    let failed = target.deliver(&source, &batch).await.unwrap_err();
    assert_eq!(failed.delivered, 3, "{failed:?}");
    assert!(!failed.permanent);
    assert!(failed.error.contains("500"), "{failed:?}");
    println!("error answer: {}", failed.error);

    // As the forwarder does: a new target, the rest of the batch.
    let mut target = destination.open(&url, &source).await.unwrap();
    let failed = target.deliver(&source, &batch[3..]).await.unwrap_err();
    assert_eq!(failed.delivered, 0, "{failed:?}");
    let mut target = destination.open(&url, &source).await.unwrap();
    target.deliver(&source, &batch[3..]).await.unwrap();

    assert_eq!(hook.accepted(), (100..110).collect::<Vec<_>>());
    let seen = hook.seen();
    assert_eq!(seen.len(), 12);
    assert!(seen.iter().all(|s| s.authorization.is_none() && s.uri == "/hook?key=value"));
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_is_down_fails_at_once_and_one_restarted_takes_messages_again() {
    let hook = Hook::default();
    let server = any_port(hook.clone()).await;
    let addr = server.addr;
    let url = Url::parse(&format!("http://{addr}/")).unwrap();
    let destination = webhook::configure(&url).unwrap();
    let source = hooks::source();
    let mut target = destination.open(&url, &source).await.unwrap();
    target.deliver(&source, &hooks::batch(0..2)).await.unwrap();

    server.stop().await;
    let started = Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(10), target.deliver(&source, &hooks::batch(2..4)))
        .await
        .expect("a refused connection does not wait for the request timeout")
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(failed.delivered, 0);
    assert!(!failed.permanent);
    assert!(failed.error.contains("connect"), "{failed:?}");
    println!("server down: {}", failed.error);

    let server = Server::start(addr, hook.clone()).await;
    let mut target = destination.open(&url, &source).await.unwrap();
    target.deliver(&source, &hooks::batch(2..4)).await.unwrap();
    assert_eq!(hook.accepted(), vec![0, 1, 2, 3]);
    server.stop().await;
}

#[test]
fn unusable_token_files_are_named_without_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let error = |path: &std::path::Path| {
        let url =
            Url::parse(&format!("https://hooks.example/x?token_file={}", encoded(&path.to_string_lossy()))).unwrap();
        webhook::configure(&url).err().expect("configure fails")
    };

    let missing = dir.path().join("missing");
    let e = error(&missing);
    assert!(e.contains(&*missing.to_string_lossy()) && e.contains("cannot be read"), "{e}");

    let e = error(dir.path());
    assert!(e.contains("cannot be read"), "a directory: {e}");

    let blank = dir.path().join("blank");
    std::fs::write(&blank, " \n\t\n").unwrap();
    assert!(error(&blank).contains("empty"));

    let two_lines = dir.path().join("two-lines");
    std::fs::write(&two_lines, "first-secret\nsecond-secret\n").unwrap();
    let e = error(&two_lines);
    assert!(e.contains("one line") && !e.contains("secret"), "{e}");

    let good = dir.path().join("good");
    std::fs::write(&good, "token\n").unwrap();
    let url = Url::parse(&format!("https://hooks.example/x?token_file={}", encoded(&good.to_string_lossy()))).unwrap();
    assert!(webhook::configure(&url).is_ok());
    let with_userinfo =
        Url::parse(&format!("https://u:p@hooks.example/x?token_file={}", encoded(&good.to_string_lossy()))).unwrap();
    assert!(webhook::configure(&with_userinfo).err().unwrap().contains("not both"));
}

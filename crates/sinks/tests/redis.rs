//! The Redis Streams destination against a real server: the shared one at 127.0.0.1:6379 for
//! delivery, trimming and refused entries, and a private `redis-server` process for outages.

mod buses;

use buses::{Topic, deliver, messages, open, unique};
use ferrocore_sinks::destination::Destination;
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Instant;

const ADDR: &str = "127.0.0.1:6379";
const REDIS_SERVER: &str = "/usr/bin/redis-server";

fn configure(url: &str) -> Arc<dyn Destination> {
    ferrocore_sinks::redis::configure(&url::Url::parse(url).expect("url")).expect("configure")
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).expect("client").get_multiplexed_async_connection().await.expect("test client connects")
}

/// An entry as XRANGE returns it: its id and its fields in order.
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

async fn xrange(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<Entry> {
    redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(con).await.expect("XRANGE")
}

#[tokio::test]
async fn delivers_a_batch_in_order_with_every_field() {
    if !buses::reachable("Redis", ADDR).await {
        return;
    }
    let suffix = unique();
    let key = format!("ferrocore-test:{suffix}");
    let url = format!("redis://{ADDR}/0?stream={key}");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let mut batch = messages(5000, 500);
    // An attribute named like the payload field does not replace the payload.
    batch[1].attributes.push(("data".into(), "not the payload".into()));

    let mut target = open(&*dest, &url, &topic).await.expect("open");
    let started = Instant::now();
    deliver(&mut *target, &topic, &batch).await.expect("deliver");
    eprintln!("500 entries confirmed in {:?}", started.elapsed());

    let mut con = connection(&format!("redis://{ADDR}/0")).await;
    let entries = xrange(&mut con, &key).await;
    assert_eq!(entries.len(), 500);
    for (sent, (_id, fields)) in batch.iter().zip(&entries) {
        let mut expected = vec![(b"data".to_vec(), sent.data.to_vec())];
        expected.extend(
            buses::expected_attributes(&topic, sent)
                .into_iter()
                .filter(|(k, _)| k != "data")
                .map(|(k, v)| (k.into_bytes(), v.into_bytes())),
        );
        assert_eq!(fields, &expected, "fields of offset {}", sent.offset);
    }
    let _: () = con.del(&key).await.expect("clean up");
}

#[tokio::test]
async fn maxlen_trims_the_stream_approximately() {
    if !buses::reachable("Redis", ADDR).await {
        return;
    }
    let suffix = unique();
    let key = format!("ferrocore-test:{suffix}");
    let url = format!("redis://{ADDR}?stream={key}&maxlen=100");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let mut target = open(&*dest, &url, &topic).await.expect("open");
    for first in (0..2000).step_by(500) {
        deliver(&mut *target, &topic, &messages(first, 500)).await.expect("deliver");
    }
    let mut con = connection(&format!("redis://{ADDR}")).await;
    let len: usize = con.xlen(&key).await.expect("XLEN");
    // `MAXLEN ~` keeps at least N and trims whole macro nodes (100 entries by default).
    assert!((100..400).contains(&len), "stream kept {len} of 2000 entries");
    let entries = xrange(&mut con, &key).await;
    let last = entries.last().expect("entries");
    assert!(last.1.contains(&(b"ferrocoreOffset".to_vec(), b"1999".to_vec())), "newest entry kept");
    let _: () = con.del(&key).await.expect("clean up");
}

#[tokio::test]
async fn a_refused_entry_fails_the_batch_without_confirming_it() {
    if !buses::reachable("Redis", ADDR).await {
        return;
    }
    let suffix = unique();
    let key = format!("ferrocore-test:{suffix}");
    let url = format!("redis://{ADDR}?stream={key}");
    let topic = Topic::new(&suffix);
    let mut con = connection(&format!("redis://{ADDR}")).await;
    // A key of another type refuses XADD with WRONGTYPE.
    let _: () = con.set(&key, "not a stream").await.expect("SET");
    let dest = configure(&url);
    let mut target = open(&*dest, &url, &topic).await.expect("open");
    let failed = deliver(&mut *target, &topic, &messages(0, 20)).await.expect_err("WRONGTYPE");
    assert_eq!((failed.delivered, failed.permanent), (0, false));
    assert!(failed.error.contains("WRONGTYPE"), "{}", failed.error);

    let _: () = con.del(&key).await.expect("DEL");
    let mut target = open(&*dest, &url, &topic).await.expect("reopen");
    deliver(&mut *target, &topic, &messages(0, 20)).await.expect("deliver once the key is free");
    let len: usize = con.xlen(&key).await.expect("XLEN");
    assert_eq!(len, 20);
    let _: () = con.del(&key).await.expect("clean up");
}

#[tokio::test]
async fn an_outage_fails_delivery_and_a_reopen_after_restart_succeeds() {
    if !buses::program_exists(REDIS_SERVER) {
        return;
    }
    let port = buses::free_port();
    let port_text = port.to_string();
    let args =
        ["--port", &port_text, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", "s3cret"];
    let server = buses::start_server(REDIS_SERVER, &args, port).await;

    let suffix = unique();
    let topic = Topic::new(&suffix);
    let url = format!("redis://:s3cret@127.0.0.1:{port}?stream=outage");
    let dest = configure(&url);

    let wrong = format!("redis://:wr0ng@127.0.0.1:{port}?stream=outage");
    let refused = open(&*dest, &wrong, &topic).await.err().expect("a wrong password is refused");
    assert!(!refused.contains("wr0ng") && !refused.contains("s3cret"), "{refused}");

    let mut target = open(&*dest, &url, &topic).await.expect("open");
    deliver(&mut *target, &topic, &messages(0, 100)).await.expect("deliver while up");

    buses::stop_server(server).await;
    let started = Instant::now();
    let failed = deliver(&mut *target, &topic, &messages(100, 100)).await.expect_err("the server is down");
    eprintln!("deliver failed after {:?}: {}", started.elapsed(), failed.error);
    assert_eq!((failed.delivered, failed.permanent), (0, false));
    assert!(!failed.error.contains("s3cret"), "{}", failed.error);
    assert!(failed.error.contains(&format!("127.0.0.1:{port}")), "{}", failed.error);
    drop(target);
    let down = open(&*dest, &url, &topic).await.err().expect("open fails while the server is down");
    assert!(!down.contains("s3cret"), "{down}");

    let _server = buses::start_server(REDIS_SERVER, &args, port).await;
    let mut target = open(&*dest, &url, &topic).await.expect("reopen after restart");
    deliver(&mut *target, &topic, &messages(100, 100)).await.expect("deliver after restart");
    let mut con = connection(&format!("redis://:s3cret@127.0.0.1:{port}")).await;
    // Nothing was saved across the restart: only the second batch is there.
    let len: usize = con.xlen("outage").await.expect("XLEN");
    assert_eq!(len, 100);
}

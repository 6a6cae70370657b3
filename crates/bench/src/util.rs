//! Small concurrency helpers: a bounded worker pool over an index range, and a progress line
//! printed to stderr on long runs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Calls `f(i)` for every i in 0..n, at most `concurrency` at a time, and waits for all.
pub async fn for_each_concurrent<F, Fut>(n: usize, concurrency: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (f, next) = (f.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Prints `label: elapsed, done/total (rate/s)` every `every` until dropped.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &str, counter: Arc<AtomicU64>, total: Option<u64>, every: Duration) -> Self {
        if every.is_zero() {
            return Self { task: None };
        }
        let label = label.to_owned();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (0u64, start);
            loop {
                tokio::time::sleep(every).await;
                let now = Instant::now();
                let done = counter.load(Ordering::Relaxed);
                let rate = (done - last.0.min(done)) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
                last = (done, now);
                let of = total.map(|t| format!("/{}", crate::report::thousands(t as f64))).unwrap_or_default();
                eprintln!(
                    "[{label}] {:>6.1} s  {}{of}  ({}/s)",
                    now.duration_since(start).as_secs_f64(),
                    crate::report::thousands(done as f64),
                    crate::report::thousands(rate)
                );
            }
        });
        Self { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Keeps the first few distinct error messages, with a count of all.
#[derive(Default)]
pub struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, e: impl std::fmt::Display) {
        self.count += 1;
        let s = format!("{e:#}");
        if self.samples.len() < 5 && !self.samples.contains(&s) {
            self.samples.push(s);
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"count": self.count, "samples": self.samples})
    }
}

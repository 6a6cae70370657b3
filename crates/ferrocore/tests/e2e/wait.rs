//! Waiting for a condition rather than for time: a test polls for what it expects to happen (an
//! activity flush, an error recorded after a disconnect) until it has, within a bound, instead of
//! sleeping a guessed interval and hoping. A passing test waits no longer than the condition
//! takes; a failing one says what it waited for.

use std::time::Duration;

/// How long a condition may take before the test fails: far beyond what any of them needs, as CI
/// machines are slow and shared. Only a failing test ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Calls `check` every 10 ms until it returns `Some`, and returns that value; panics, naming
/// `what`, after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up after {PATIENCE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! What the bench measures with: a log-bucketed latency histogram (about 1.5% precision, any
//! range up to u64 nanoseconds, mergeable), samples of a process's CPU time and memory read from
//! `/proc`, and a description of the machine for the JSON report.

use serde::Serialize;
use std::time::Duration;

/// Values below this are kept exactly; above, each power of two is split in [`SUB`] buckets.
const EXACT: u64 = 128;
const SUB: u64 = 64;
const BUCKETS: usize = (EXACT + 57 * SUB) as usize;

/// Latencies in nanoseconds, bucketed so that a histogram costs 30 KB whatever it holds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let magnitude = 63 - u64::from(v.leading_zeros());
    let shift = magnitude - 6;
    let top = v >> shift;
    (EXACT + (magnitude - 7) * SUB + (top - SUB)) as usize
}

/// The smallest value of a bucket and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < EXACT {
        return (i, 1);
    }
    let rel = i - EXACT;
    let magnitude = rel / SUB + 7;
    let top = rel % SUB + SUB;
    let shift = magnitude - 6;
    (top << shift, 1 << shift)
}

impl Histogram {
    pub fn new() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0, min: u64::MAX, max: 0, sum: 0 }
    }

    pub fn record(&mut self, d: Duration) {
        self.record_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn record_nanos(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, clamped to what was seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// p50, p90, p99, p99.9, min, max and mean, in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let us = |n: u64| n as f64 / 1000.0;
        LatencySummary {
            count: self.total,
            min_us: if self.total == 0 { 0.0 } else { us(self.min) },
            p50_us: us(self.quantile(0.50)),
            p90_us: us(self.quantile(0.90)),
            p99_us: us(self.quantile(0.99)),
            p999_us: us(self.quantile(0.999)),
            max_us: us(self.max),
            mean_us: if self.total == 0 { 0.0 } else { self.sum as f64 / self.total as f64 / 1000.0 },
        }
    }
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// Clock ticks per second for `/proc/PID/stat`, from the auxiliary vector (AT_CLKTCK).
fn clock_ticks() -> u64 {
    const AT_CLKTCK: u64 = 17;
    if let Ok(raw) = std::fs::read("/proc/self/auxv") {
        for pair in raw.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap_or_default());
            let value = u64::from_ne_bytes(pair[8..].try_into().unwrap_or_default());
            if key == AT_CLKTCK && value > 0 {
                return value;
            }
        }
    }
    100
}

/// One reading of a process: CPU seconds used so far (user + system, all threads, dead ones
/// included) and memory.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; None when the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime(14) stime(15) ... num_threads(20), numbered from 1.
    let tick = clock_ticks() as f64;
    let utime = fields.get(11)?.parse::<u64>().ok()? as f64 / tick;
    let stime = fields.get(12)?.parse::<u64>().ok()? as f64 / tick;
    let threads = fields.get(17)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu_seconds: utime + stime,
        user_seconds: utime,
        system_seconds: stime,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        threads,
    })
}

/// The sum of several processes' readings (the nodes of a cluster); None when any is gone.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = ProcSample::default();
    for &pid in pids {
        let s = sample(pid)?;
        total.cpu_seconds += s.cpu_seconds;
        total.user_seconds += s.user_seconds;
        total.system_seconds += s.system_seconds;
        total.rss_kib += s.rss_kib;
        total.hwm_kib += s.hwm_kib;
        total.threads += s.threads;
    }
    Some(total)
}

/// CPU and memory of the server (when its pid is known; summed over its processes when it runs
/// as several), of other processes it relies on (NATS, a database: CPU only, apart), and of
/// the bench itself over a window.
#[derive(Serialize, Clone, Debug, Default)]
pub struct CpuWindow {
    pub server_cpu_seconds: Option<f64>,
    pub server_user_seconds: Option<f64>,
    pub server_system_seconds: Option<f64>,
    pub bench_cpu_seconds: f64,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_cpu_seconds: Option<f64>,
}

/// Samples taken at the start of a measured window.
pub struct Window {
    server_pids: Vec<u32>,
    server: Option<ProcSample>,
    other_pids: Vec<u32>,
    others: Option<ProcSample>,
    bench: Option<ProcSample>,
}

impl Window {
    pub fn start(server_pid: Option<u32>) -> Self {
        Self::start_all(server_pid.as_slice(), &[])
    }

    /// A window over the server's processes `server_pids` (summed) and, apart, `other_pids`.
    pub fn start_all(server_pids: &[u32], other_pids: &[u32]) -> Self {
        Self {
            server_pids: server_pids.to_vec(),
            server: sample_all(server_pids),
            other_pids: other_pids.to_vec(),
            others: sample_all(other_pids),
            bench: sample(std::process::id()),
        }
    }

    pub fn finish(&self) -> CpuWindow {
        let server_end = sample_all(&self.server_pids);
        let others_end = sample_all(&self.other_pids);
        let bench_end = sample(std::process::id());
        let delta = |a: Option<ProcSample>, b: Option<ProcSample>, f: fn(&ProcSample) -> f64| match (a, b) {
            (Some(a), Some(b)) => Some(f(&b) - f(&a)),
            _ => None,
        };
        CpuWindow {
            server_cpu_seconds: delta(self.server, server_end, |s| s.cpu_seconds),
            server_user_seconds: delta(self.server, server_end, |s| s.user_seconds),
            server_system_seconds: delta(self.server, server_end, |s| s.system_seconds),
            bench_cpu_seconds: delta(self.bench, bench_end, |s| s.cpu_seconds).unwrap_or(0.0),
            server_rss_kib_before: self.server.map(|s| s.rss_kib),
            server_rss_kib_after: server_end.map(|s| s.rss_kib),
            other_cpu_seconds: delta(self.others, others_end, |s| s.cpu_seconds),
        }
    }
}

impl CpuWindow {
    /// Server CPU microseconds per operation, when the server was sampled.
    pub fn server_us_per(&self, ops: u64) -> Option<f64> {
        match (self.server_cpu_seconds, ops) {
            (Some(s), n) if n > 0 => Some(s * 1e6 / n as f64),
            _ => None,
        }
    }

    /// CPU microseconds of the other processes (`--other-pid`) per operation, when sampled.
    pub fn other_us_per(&self, ops: u64) -> Option<f64> {
        match (self.other_cpu_seconds, ops) {
            (Some(s), n) if n > 0 => Some(s * 1e6 / n as f64),
            _ => None,
        }
    }
}

/// What the numbers were measured on.
#[derive(Serialize, Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub open_files_limit: Option<String>,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let open_files_limit = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join("/"));
    Machine {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        memory_gib: mem_kib as f64 / (1024.0 * 1024.0),
        open_files_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, width) = bucket_range(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(low + (width - 1)), i);
            assert!(width as f64 / low.max(1) as f64 <= 1.0 / 32.0 || low < EXACT);
            if i + 1 < BUCKETS {
                expected_low = low + width;
            }
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record_nanos(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.summary().count, 100_000);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.threads >= 1);
    }
}

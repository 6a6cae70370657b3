//! Results: a table on stdout and, with `--json FILE`, the same numbers as JSON for scripts and
//! charts.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;

/// A run's outcome, as printed and saved.
pub struct Report {
    pub scenario: &'static str,
    pub params: Value,
    pub results: Value,
    /// Label and value, printed in this order.
    pub rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &'static str, params: Value) -> Self {
        Self { scenario, params, results: json!({}), rows: Vec::new() }
    }

    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.rows.push((label.into(), value.into()));
    }

    pub fn set(&mut self, key: &str, value: impl serde::Serialize) {
        self.results[key] = serde_json::to_value(value).unwrap_or(Value::Null);
    }

    pub fn print(&self, target: &str) {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        println!();
        println!("{} against {target}", self.scenario);
        println!("{}", "-".repeat(width + 30));
        for (label, value) in &self.rows {
            println!("{label:<width$}  {value}");
        }
        println!();
    }

    pub fn write_json(&self, path: &Path, common: Value) -> Result<()> {
        let doc = json!({
            "tool": "ferrocore-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "scenario": self.scenario,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "target": common,
            "params": self.params,
            "results": self.results,
            "machine": crate::stats::machine(),
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// 1234567.8 → "1,234,568".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A latency in µs, or ms past 10 ms.
pub fn micros(us: f64) -> String {
    if us >= 10_000.0 { format!("{:.1} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

pub fn latency_row(s: &crate::stats::LatencySummary) -> String {
    format!("p50 {}  p90 {}  p99 {}  max {}", micros(s.p50_us), micros(s.p90_us), micros(s.p99_us), micros(s.max_us))
}

pub fn opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a (no --server-pid)".into(), |v| format!("{v:.2} µs"))
}

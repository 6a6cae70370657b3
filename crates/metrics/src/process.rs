//! The standard `process_*` series, read from `/proc/self` at scrape time. Linux only: elsewhere,
//! or when `/proc` cannot be read, [`read`] gives None and the series are left out.

use crate::Encoder;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Default)]
pub struct ProcessValues {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc`'s times (USER_HZ): 100 on every Linux architecture's ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the process's values; None where `/proc/self` is missing or unreadable.
pub fn read() -> Option<ProcessValues> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime 15, starttime 22, vsize 23.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND;
    let virtual_bytes = field(23)?;
    // VmRSS is in kB whatever the page size.
    let resident_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
    });
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok()));
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    Some(ProcessValues { cpu_seconds, resident_bytes, virtual_bytes, open_fds, max_fds, start_time_seconds })
}

impl ProcessValues {
    pub(crate) fn render(&self, e: &mut Encoder) {
        e.family("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.");
        e.sample("process_cpu_seconds_total", &[], self.cpu_seconds);
        e.family("process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.");
        e.sample("process_resident_memory_bytes", &[], self.resident_bytes);
        e.family("process_virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.");
        e.sample("process_virtual_memory_bytes", &[], self.virtual_bytes);
        e.family("process_open_fds", "gauge", "Open file descriptors.");
        e.sample("process_open_fds", &[], self.open_fds);
        if let Some(max) = self.max_fds {
            e.family("process_max_fds", "gauge", "The limit on open file descriptors.");
            e.sample("process_max_fds", &[], max);
        }
        if let Some(start) = self.start_time_seconds {
            e.family(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
            );
            e.sample("process_start_time_seconds", &[], start);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            assert!(super::read().is_none());
            return;
        }
        let p = super::read().expect("/proc/self is readable");
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.virtual_bytes >= p.resident_bytes);
    }
}

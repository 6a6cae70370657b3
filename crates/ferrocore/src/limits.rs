//! How long and how many: the timeouts and connection caps of the HTTP and gRPC listeners, the
//! shutdown deadline, and the process's open-file limit and use of transparent huge pages.
//!
//! Every listener a client can reach without credentials is bounded in time and in number, so that
//! nobody can hold the process's file descriptors or its shutdown hostage.

use std::time::Duration;

/// Timeouts and caps of the HTTP and gRPC listeners (MQTT has its own, in `MqttConfig`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// HTTP connections served at once; further ones are closed at accept.
    pub http_max_connections: usize,
    /// Time a client has to send a request's line and headers, from the connection's accept or
    /// from its first byte after an idle wait.
    pub http_header_timeout: Duration,
    /// Time a client has to send a request's body, once its headers are in.
    pub http_body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request, and how long a response
    /// may wait for the client to read it.
    pub http_idle_timeout: Duration,
    /// gRPC connections served at once; further ones are closed at accept.
    pub grpc_max_connections: usize,
    /// Time from a gRPC connection's accept to its HTTP/2 preface (the TLS handshake included).
    pub grpc_handshake_timeout: Duration,
    /// Interval of the HTTP/2 pings that check a gRPC peer is still there.
    pub grpc_keepalive_interval: Duration,
    /// How long a gRPC peer has to answer such a ping before its connection is closed.
    pub grpc_keepalive_timeout: Duration,
    /// Longest a unary gRPC call may take (streams are bounded only until their response
    /// begins: Pub/Sub's StreamingPull legitimately stays open for hours).
    pub grpc_request_timeout: Duration,
    /// After a shutdown signal, how long requests in progress may take before they are aborted.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            http_max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(60),
            http_idle_timeout: Duration::from_secs(60),
            grpc_max_connections: 512,
            grpc_handshake_timeout: Duration::from_secs(10),
            grpc_keepalive_interval: Duration::from_secs(60),
            grpc_keepalive_timeout: Duration::from_secs(20),
            grpc_request_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// TCP keep-alive on accepted gRPC connections: finds peers that vanished without a FIN.
pub(crate) const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Raises the soft limit on open files to the hard limit, and returns the limit in force.
///
/// The default soft limit (often 1024) is far below what the listeners' caps allow; without this,
/// a few hundred connections on one listener would starve the others and the topic log of files.
pub fn raise_open_file_limit() -> Option<u64> {
    let raised = rlimit::increase_nofile_limit(u64::MAX).or_else(|e| {
        // An unlimited hard limit cannot become the soft one on Linux; the kernel's ceiling can.
        match std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()) {
            Some(ceiling) => rlimit::increase_nofile_limit(ceiling),
            None => Err(e),
        }
    });
    match raised {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; keeping the current one");
            rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
        }
    }
}

/// Turns transparent huge pages off for this process unless `allow` (Linux; elsewhere nothing to
/// do). Memory already backed by huge pages stays so; [`restart_without_transparent_huge_pages`]
/// avoids that for a whole program.
///
/// The allocator asks the kernel for huge pages on the large regions it reserves, and a kernel in
/// `madvise` or `always` mode then backs them 2 MiB at a time: memory that a few idle connections
/// touch becomes resident in 2 MiB steps. With a fleet of quiet connections that is much of the
/// resident memory they seem to cost (19,000 idle connections measured 30.6 MiB with huge pages,
/// 25.8 MiB without, from 37.8 and 24.2 MiB at start; docs/benchmarks.md). Databases that hold many
/// small objects (Redis, MongoDB) turn them off for the same reason.
pub fn set_transparent_huge_pages(allow: bool) {
    #[cfg(target_os = "linux")]
    {
        if allow {
            return;
        }
        match rustix::thread::disable_transparent_huge_pages(true) {
            Ok(()) => tracing::debug!("transparent huge pages off for this process"),
            Err(e) => tracing::warn!(error = %e, "cannot turn transparent huge pages off; keeping them"),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allow;
}

/// For a program's `main`, before anything else: unless `allow`, turns transparent huge pages off
/// and, if they were on, runs the program again in this process (`exec`), so that nothing it
/// allocates is ever backed by them. The allocator reserves its first region and touches it
/// before `main` runs; under huge pages that alone keeps 4 MiB resident. Returns if they were
/// off already, or if the program cannot be run again (then they are off from here on).
pub fn restart_without_transparent_huge_pages(allow: bool) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if allow || rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(true) {
            return;
        }
        // Inherited across exec, which is what makes the second run start without them.
        if rustix::thread::disable_transparent_huge_pages(true).is_err() {
            return;
        }
        // The program's path rather than /proc/self/exe: under valgrind the latter is valgrind's
        // own tool, which refuses to run alone (there, pass --transparent-huge-pages, or
        // valgrind's --trace-children=yes).
        let Ok(program) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let mut again = std::process::Command::new(program);
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        let error = again.args(args).exec();
        tracing::debug!(%error, "could not run again without transparent huge pages");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allow;
}

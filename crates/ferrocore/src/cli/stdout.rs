//! Writing to stdout, and ending quietly when the reader goes away (`ferrocore events tail | head`).
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `EPIPE`, and `print!` panics on
//! it. Every client verb writes its data through [`write`] instead, and one rule applies: once
//! stdout's reader is gone, the command has nothing left to do, so the process ends at once,
//! printing nothing, with exit status 0, as ripgrep, fd or bat do. (0 rather than the 141 of a
//! process killed by SIGPIPE: under `set -o pipefail`, `ferrocore events tail ... | head -n 1`
//! should not fail the pipeline for having stopped where it was asked to.) Nothing more is sent to
//! the server after that point: `pubsub pull --auto-ack` does not acknowledge what it could not
//! print.
//!
//! Commands that wait between writes (`events tail`, `logs read --follow`, `device simulate`) also
//! run under [`until_closed`], which notices the reader leaving while nothing is being written
//! (a long poll, an idle device) and ends them then, not at their next line. `cli::run` applies
//! the same rule to a `BrokenPipe` error that comes back up a command's error chain.

use std::future::Future;
use std::io::{self, Write};

/// Writes `text` to stdout and flushes it; ends the process quietly if stdout's reader is gone.
/// Any other failure (a full disk behind `> file`) is returned.
pub fn write(text: impl AsRef<[u8]>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let written = out.write_all(text.as_ref()).and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => reader_gone(),
        other => other,
    }
}

/// [`write`] of `line` and a newline.
pub fn line(line: impl std::fmt::Display) -> io::Result<()> {
    write(format!("{line}\n"))
}

/// True when `e`, or any of its causes, is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

/// Ends the process as a closed stdout wants: no message, exit status 0.
pub fn reader_gone() -> ! {
    std::process::exit(0)
}

/// Runs `work`, unless stdout's reader goes away first: then the process ends quietly at once.
/// Stdout that cannot be watched (a file, /dev/null, a closed descriptor) is never "gone".
pub async fn until_closed<T>(work: impl Future<Output = T>) -> T {
    tokio::select! {
        done = work => done,
        () = closed() => reader_gone(),
    }
}

/// Resolves when stdout is a pipe (or socket, or terminal) whose reading end has gone away; never
/// otherwise. A thread waits in poll(2) with no events asked for, so it wakes only on POLLERR (a
/// pipe without reader) or POLLHUP; regular files and /dev/null never report either.
async fn closed() {
    use rustix::event::{PollFd, PollFlags, poll};
    let (gone, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = std::thread::Builder::new().name("stdout-watch".into()).spawn(move || {
        let stdout = io::stdout();
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        loop {
            match poll(&mut fds, None) {
                Err(rustix::io::Errno::INTR) => continue,
                // A closed descriptor (POLLNVAL) or a failed poll: nothing to watch.
                Err(_) => return,
                Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                    let _ = gone.send(());
                    return;
                }
                Ok(_) => return,
            }
        }
    });
    // Without a watcher, or when it gave up, stdout is never "gone".
    if watcher.is_err() || gone_rx.await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_found_anywhere_in_the_chain() {
        let pipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("cannot write to stdout");
        assert!(is_broken_pipe(&pipe));
        let other = anyhow::Error::new(io::Error::from(io::ErrorKind::StorageFull)).context("cannot write to stdout");
        assert!(!is_broken_pipe(&other));
        assert!(!is_broken_pipe(&anyhow::anyhow!("Broken pipe")), "by kind, not by wording");
    }
}

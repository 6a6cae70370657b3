//! Where there is no epoll, quiet sessions keep their task: this lot refuses to open, and the
//! listener then never parks a session.

use std::os::fd::BorrowedFd;
use std::task::Waker;
use tokio::time::Instant;

/// What could wait in the lot (see the Linux `park` module).
pub(crate) trait Parkable {
    fn socket(&self) -> BorrowedFd<'_>;
    fn deadline(&self) -> Instant;
    fn watch(&self, waker: &Waker) -> bool;
    fn unwatch(&self);
}

/// A lot that cannot be opened here.
pub(crate) struct Parking<T>(std::marker::PhantomData<T>);

impl<T: Parkable> Parking<T> {
    pub(crate) fn new() -> std::io::Result<Self> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "parking needs epoll (Linux)"))
    }

    pub(crate) fn len(&self) -> usize {
        0
    }

    pub(crate) fn park(&mut self, item: T) -> Result<(), T> {
        Err(item)
    }

    pub(crate) fn take_all(&mut self) -> Vec<T> {
        Vec::new()
    }

    pub(crate) async fn next(&mut self) -> T {
        std::future::pending().await
    }
}

//! Quiet plain connections, parked without a task until they have something to do.
//!
//! Most connected devices say nothing for minutes. While its session runs, an idle connection
//! costs a task, the session's future, a timer and a registration with the runtime's reactor
//! (each padded to a cache line pair): most of what an idle connection costs. A plain session
//! that has been quiet for a while (nothing in flight, nothing buffered) leaves its task instead:
//! its socket moves to this lot's own epoll set, and what the session must remember (device,
//! subscriptions, deadlines) waits here in one small allocation. It runs again, in a new task,
//! when its socket has input or closes, when its mailbox gets something (a command, a config, an
//! order to close), or when its earliest deadline (keep-alive, token expiry) comes.
//!
//! The lot is driven by one task (the listener's): parking and unparking are a few system calls
//! and no allocation beyond the parked state, so a device that speaks every few seconds can park
//! between messages. Linux only (epoll); elsewhere nothing is parked.

use rustix::event::{Timespec, epoll};
use std::collections::{BTreeSet, VecDeque};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

/// Socket events taken from the epoll set in one call.
const EVENT_BATCH: usize = 256;

/// Deadlines are kept in ticks of this length (rounded up: an item runs at most this late), so
/// that a deadline fits in 4 bytes beside its slot's index.
const TICK: Duration = Duration::from_millis(100);

/// What can wait in the lot.
pub(crate) trait Parkable {
    /// The socket whose input (or close) wakes it.
    fn socket(&self) -> BorrowedFd<'_>;
    /// When it must run again even if nothing happens.
    fn deadline(&self) -> Instant;
    /// True when something already waits for it; otherwise `waker` is woken once something does.
    fn watch(&self, waker: &Waker) -> bool;
    /// Forgets the waker `watch` kept.
    fn unwatch(&self);
}

/// Parked items, each woken by its socket, its mailbox or its deadline.
pub(crate) struct Parking<T> {
    epoll: AsyncFd<OwnedFd>,
    slots: Vec<Slot<T>>,
    /// Indexes of empty slots.
    free: Vec<u32>,
    len: usize,
    /// Every parked item's deadline tick (see [`TICK`]) and slot index, earliest first.
    deadlines: BTreeSet<(u32, u32)>,
    /// Tick 0.
    origin: Instant,
    /// Keys to unpark, maybe stale (an item woken twice, or already gone).
    ready: VecDeque<u64>,
    woken: Arc<Woken>,
    timer: Pin<Box<Sleep>>,
}

/// A slot's generation goes up each time its item leaves, so a stale key finds nothing.
struct Slot<T> {
    generation: u32,
    /// The item's deadline tick, as in the deadline set.
    tick: u32,
    item: Option<T>,
}

/// Keys whose mailbox woke them, and the lot's task to wake.
#[derive(Default)]
struct Woken(Mutex<WokenState>);

#[derive(Default)]
struct WokenState {
    keys: Vec<u64>,
    task: Option<Waker>,
}

impl Woken {
    fn lock(&self) -> MutexGuard<'_, WokenState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The waker a parked item leaves in its mailbox.
struct KeyWaker {
    woken: Arc<Woken>,
    key: u64,
}

impl Wake for KeyWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.woken.lock();
        state.keys.push(self.key);
        let task = state.task.take();
        drop(state);
        if let Some(task) = task {
            task.wake();
        }
    }
}

fn key(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl<T: Parkable> Parking<T> {
    /// An empty lot, on the current runtime; fails only if the system refuses an epoll set.
    pub(crate) fn new() -> std::io::Result<Self> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // Deprecated because a `T` may close or swap its descriptor while registered; an
        // `OwnedFd` the `AsyncFd` owns for its whole life cannot.
        #[allow(deprecated)]
        let epoll = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Self {
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            deadlines: BTreeSet::new(),
            origin: Instant::now(),
            ready: VecDeque::new(),
            woken: Arc::default(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        })
    }

    /// The tick at or after `at`.
    fn tick(&self, at: Instant) -> u32 {
        let since = at.saturating_duration_since(self.origin);
        u32::try_from(since.as_nanos().div_ceil(TICK.as_nanos())).unwrap_or(u32::MAX)
    }

    /// When `tick` begins.
    fn instant(&self, tick: u32) -> Instant {
        self.origin + TICK * tick
    }

    /// Items parked now.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Parks `item` until its socket, mailbox or deadline wakes it; gives it back if its socket
    /// cannot be watched.
    pub(crate) fn park(&mut self, item: T) -> Result<(), T> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => match u32::try_from(self.slots.len()) {
                Ok(i) => {
                    self.slots.push(Slot { generation: 0, tick: 0, item: None });
                    i
                }
                Err(_) => return Err(item),
            },
        };
        let key = key(index, self.slots[index as usize].generation);
        // One-shot: once its socket wakes it, the item is unparked and leaves the set anyway.
        let interest = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        if epoll::add(self.epoll.get_ref(), item.socket(), epoll::EventData::new_u64(key), interest).is_err() {
            self.free.push(index);
            return Err(item);
        }
        if item.watch(&Waker::from(Arc::new(KeyWaker { woken: self.woken.clone(), key }))) {
            self.ready.push_back(key);
        }
        let tick = self.tick(item.deadline());
        self.deadlines.insert((tick, index));
        let slot = &mut self.slots[index as usize];
        slot.tick = tick;
        slot.item = Some(item);
        self.len += 1;
        Ok(())
    }

    /// Takes the item under `key` out of the lot, if it is still there.
    fn take(&mut self, key: u64) -> Option<T> {
        let (index, generation) = ((key & u64::from(u32::MAX)) as u32, (key >> 32) as u32);
        let slot = self.slots.get_mut(index as usize).filter(|s| s.generation == generation)?;
        let item = slot.item.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        let tick = slot.tick;
        self.free.push(index);
        self.len -= 1;
        self.deadlines.remove(&(tick, index));
        // Fails only if the socket is no longer in the set, which is what this wants anyway.
        let _ = epoll::delete(self.epoll.get_ref(), item.socket());
        item.unwatch();
        Some(item)
    }

    /// Takes every item out (on shutdown).
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        let keys: Vec<u64> = self.deadlines.iter().map(|&(_, i)| key(i, self.slots[i as usize].generation)).collect();
        keys.into_iter().filter_map(|k| self.take(k)).collect()
    }

    /// The next item that has something to do. Cancel safe: an item is only taken out when it is
    /// returned.
    pub(crate) async fn next(&mut self) -> T {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        loop {
            while let Some(key) = self.ready.pop_front() {
                if let Some(item) = self.take(key) {
                    return Poll::Ready(item);
                }
            }
            {
                // Registered before the other sources are looked at, so a wake-up in between
                // is not missed.
                let mut woken = self.woken.lock();
                if !woken.keys.is_empty() {
                    self.ready.extend(woken.keys.drain(..));
                    continue;
                }
                woken.task = Some(cx.waker().clone());
            }
            if let Poll::Ready(ready) = self.epoll.poll_read_ready(cx) {
                match ready {
                    Ok(mut guard) => {
                        let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENT_BATCH];
                        match epoll::wait(guard.get_inner(), &mut events, Some(&Timespec::default())) {
                            Ok((got, _)) => {
                                // A full batch may have left more behind: look again.
                                if got.len() < EVENT_BATCH {
                                    guard.clear_ready();
                                }
                                self.ready.extend(got.iter().map(|e| e.data.u64()));
                            }
                            Err(rustix::io::Errno::INTR) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "waiting on parked connections failed");
                                guard.clear_ready();
                            }
                        }
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "the parked connections' epoll set failed"),
                }
            }
            if let Some(&(tick, index)) = self.deadlines.first() {
                let due = self.instant(tick);
                if due <= Instant::now() {
                    self.ready.push_back(key(index, self.slots[index as usize].generation));
                    continue;
                }
                if self.timer.deadline() != due || self.timer.is_elapsed() {
                    self.timer.as_mut().reset(due);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A parked socket with a pretend mailbox.
    struct Item {
        name: &'static str,
        socket: std::net::TcpStream,
        deadline: Instant,
        mailbox: Arc<Mailbox>,
    }

    #[derive(Default)]
    struct Mailbox {
        full: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Mailbox {
        fn deliver(&self) {
            self.full.store(true, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    impl Parkable for Item {
        fn socket(&self) -> BorrowedFd<'_> {
            self.socket.as_fd()
        }
        fn deadline(&self) -> Instant {
            self.deadline
        }
        fn watch(&self, waker: &Waker) -> bool {
            *self.mailbox.waker.lock().unwrap() = Some(waker.clone());
            self.mailbox.full.load(Ordering::SeqCst)
        }
        fn unwatch(&self) {
            self.mailbox.waker.lock().unwrap().take();
        }
    }

    /// A connected pair: the server's end (to park) and the client's.
    async fn pair(listener: &tokio::net::TcpListener) -> (std::net::TcpStream, tokio::net::TcpStream) {
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        (accepted.unwrap().0.into_std().unwrap(), client.unwrap())
    }

    fn item(name: &'static str, socket: std::net::TcpStream, after: Duration) -> Item {
        Item { name, socket, deadline: Instant::now() + after, mailbox: Arc::default() }
    }

    async fn next(lot: &mut Parking<Item>) -> &'static str {
        tokio::time::timeout(Duration::from_secs(5), lot.next()).await.expect("an item wakes").name
    }

    #[tokio::test]
    async fn items_wake_on_input_close_mailbox_and_deadline_and_not_before() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut lot = Parking::new().unwrap();
        let hour = Duration::from_secs(3600);
        let (s1, mut input) = pair(&listener).await;
        let (s2, closing) = pair(&listener).await;
        let (s3, _c3) = pair(&listener).await;
        let (s4, _c4) = pair(&listener).await;
        let mail = item("mail", s3, hour);
        let mailbox = mail.mailbox.clone();
        for i in
            [item("input", s1, hour), item("closed", s2, hour), mail, item("deadline", s4, Duration::from_millis(300))]
        {
            assert!(lot.park(i).is_ok());
        }
        assert_eq!(lot.len(), 4);
        assert!(tokio::time::timeout(Duration::from_millis(100), lot.next()).await.is_err(), "nothing happened yet");

        input.write_all(b"x").await.unwrap();
        assert_eq!(next(&mut lot).await, "input");
        drop(closing);
        assert_eq!(next(&mut lot).await, "closed");
        mailbox.deliver();
        assert_eq!(next(&mut lot).await, "mail");
        assert!(mailbox.waker.lock().unwrap().is_none(), "an unparked item's waker is forgotten");
        assert_eq!(next(&mut lot).await, "deadline");
        assert_eq!(lot.len(), 0);
    }

    #[tokio::test]
    async fn an_item_with_input_already_waiting_wakes_at_once_and_keys_are_not_reused_stale() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut lot = Parking::new().unwrap();
        let hour = Duration::from_secs(3600);
        let (s1, mut c1) = pair(&listener).await;
        c1.write_all(b"early").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let early = item("early", s1, hour);
        early.mailbox.deliver();
        lot.park(early).ok().unwrap();
        // Woken twice (mailbox and socket), returned once.
        let back = tokio::time::timeout(Duration::from_secs(5), lot.next()).await.unwrap();
        assert_eq!(back.name, "early");
        // Its slot is reused by another item, which the stale wake-ups must not return.
        let (s2, _c2) = pair(&listener).await;
        lot.park(item("quiet", s2, hour)).ok().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(150), lot.next()).await.is_err());
        // Parked again, the first item is watched again.
        back.mailbox.full.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 8];
        let n = std::io::Read::read(&mut &back.socket, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"early");
        lot.park(back).ok().unwrap();
        c1.write_all(b"again").await.unwrap();
        assert_eq!(next(&mut lot).await, "early");
        let all = lot.take_all();
        assert_eq!(all.iter().map(|i| i.name).collect::<Vec<_>>(), ["quiet"]);
        assert_eq!(lot.len(), 0);
    }
}

//! TLS for the MQTT listener, holding no buffer while a connection is idle.
//!
//! Most of a fleet's connections sit idle between messages, so whatever an idle connection keeps
//! is multiplied by every device. tokio-rustls drives rustls' buffered `ServerConnection`, which
//! keeps a 4 KiB receive buffer (allocated at the first read, never shrunk) for the connection's
//! whole life. [`TlsStream`] drives rustls' unbuffered API instead:
//!
//! * bytes from the socket are read into a chunk on the stack of the read call and processed
//!   there; only the start of a record that has not fully arrived, or plaintext the reader had no
//!   room for, is moved to the heap, and each of those buffers is freed as soon as it is empty;
//! * ciphertext is kept only until the socket takes it, then freed; a write takes no plaintext
//!   while earlier ciphertext still waits, so a device that does not read holds one record here.
//!
//! Each buffer is bounded: a record (or, during the handshake, a handshake message rustls accepts)
//! waiting for its end, the plaintext of one read chunk, the ciphertext of one write.
//!
//! An idle stream thus holds no I/O buffer ([`TlsStream::buffered_capacity`] is 0), only rustls'
//! connection state. The HTTP and gRPC listeners keep tokio-rustls: they serve few connections.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};

/// The largest TLS record rustls accepts on the wire: a 5-byte header and up to 18 KiB.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// Bytes read from the socket at once, into a chunk on the stack: the largest record fits.
const READ_CHUNK: usize = MAX_RECORD;

/// Plaintext encrypted by one write: one full record.
const MAX_WRITE: usize = 16 * 1024;

/// The most received bytes kept for the rest to arrive: a record, or during the handshake a
/// handshake message spread over records (rustls accepts up to 64 KiB) and the record under way.
const MAX_INCOMING: usize = 0x1_0000 + 2 * MAX_RECORD;

/// A server-side TLS stream over `S`, once [`accept`] completed the handshake.
pub struct TlsStream<S> {
    io: S,
    /// Boxed: the stream lives in every session's future, whose size each connection pays.
    tls: Box<Tls>,
}

/// The TLS side of a stream: rustls' connection and the bytes waiting on either side of it.
struct Tls {
    conn: UnbufferedServerConnection,
    /// Received bytes not processed yet: the start of a record that has not fully arrived.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader had no room for, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// Ciphertext the socket has not taken yet, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The peer's close_notify came: reads see the end of the stream.
    peer_closed: bool,
    /// Our close_notify is queued: nothing more may be written.
    closed: bool,
    /// A TLS error ended the connection: every later read or write fails.
    failed: bool,
}

/// Where processing received bytes stopped.
enum Stop {
    /// Every whole record is processed; more bytes from the peer are needed.
    NeedInput,
    /// So many bytes of the data to write were encrypted.
    Encrypted(usize),
    /// Our close_notify is queued (the peer's may have come too).
    Closed,
}

/// What to do once the connection may send application data.
#[derive(Clone, Copy)]
enum Goal<'a> {
    Nothing,
    Write(&'a [u8]),
    CloseNotify,
}

/// Completes the server side of a TLS handshake on `io`, the server's last flight (and the
/// session ticket that lets the client resume) written out.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<rustls::ServerConfig>,
    io: S,
) -> io::Result<TlsStream<S>> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let tls = Tls {
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        plaintext_read: 0,
        outgoing: Vec::new(),
        outgoing_sent: 0,
        peer_closed: false,
        closed: false,
        failed: false,
    };
    let mut stream = TlsStream { io, tls: Box::new(tls) };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl<S> TlsStream<S> {
    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The rustls connection: negotiated version, handshake kind and so on.
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.tls.conn
    }

    /// Heap bytes this stream holds for I/O (received, decrypted or encrypted data waiting): 0
    /// whenever nothing waits, which is what an idle connection costs.
    pub fn buffered_capacity(&self) -> usize {
        self.tls.incoming.capacity() + self.tls.plaintext.capacity() + self.tls.outgoing.capacity()
    }
}

impl Tls {
    fn check(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the TLS connection failed"))
        } else {
            Ok(())
        }
    }

    /// Processes `input` (just read), after what was kept from before, toward `goal`;
    /// application data goes to `read` as far as it has room, the rest to `plaintext`. Keeps what
    /// is left of an incomplete record.
    fn run(&mut self, input: &mut [u8], goal: Goal<'_>, read: Option<&mut ReadBuf<'_>>) -> io::Result<Stop> {
        let stop = if self.incoming.is_empty() {
            let (consumed, stop) = self.process(input, goal, read);
            let rest = &input[consumed..];
            if !rest.is_empty() && !self.peer_closed {
                let mut kept = Vec::with_capacity(record_len(rest).max(rest.len()));
                kept.extend_from_slice(rest);
                self.incoming = kept;
            }
            stop
        } else {
            let mut incoming = std::mem::take(&mut self.incoming);
            incoming.extend_from_slice(input);
            let (consumed, stop) = self.process(&mut incoming, goal, read);
            if consumed < incoming.len() && !self.peer_closed {
                incoming.drain(..consumed);
                self.incoming = incoming;
            }
            stop
        };
        if self.incoming.len() > MAX_INCOMING {
            self.failed = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS message too large"));
        }
        stop
    }

    /// Runs rustls over `incoming` until it needs more input or `goal` is done: the bytes of
    /// `incoming` consumed, and where it stopped.
    fn process(
        &mut self,
        incoming: &mut [u8],
        goal: Goal<'_>,
        mut read: Option<&mut ReadBuf<'_>>,
    ) -> (usize, io::Result<Stop>) {
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(&mut incoming[consumed..]);
            let step = match state {
                Err(e) => Err(tls_error(e)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                deliver(&mut read, &mut self.plaintext, record.payload);
                            }
                            Err(e) => {
                                step = Err(tls_error(e));
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.outgoing).map(|()| None),
                // The encoded bytes are in `outgoing`, which is written out before anything
                // queued later: they count as sent.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::NeedInput)),
                // Reported once: remembered for the reads that follow.
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Stop::Closed)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match goal {
                    Goal::Nothing => Ok(Some(Stop::NeedInput)),
                    Goal::Write(data) => {
                        let n = data.len().min(MAX_WRITE);
                        encrypt(&mut traffic, &data[..n], &mut self.outgoing).map(|()| Some(Stop::Encrypted(n)))
                    }
                    Goal::CloseNotify => close_notify(&mut traffic, &mut self.outgoing).map(|()| Some(Stop::Closed)),
                },
                // The server config accepts no early data, so rustls offers none.
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS early data"))
                }
                Ok(other) => Err(io::Error::other(format!("unexpected TLS connection state {other:?}"))),
            };
            consumed += discard;
            match step {
                Ok(None) => {}
                Ok(Some(stop)) => return (consumed, Ok(stop)),
                Err(e) => {
                    self.failed = true;
                    self.queue_alert();
                    return (consumed, Err(e));
                }
            }
        }
    }

    /// After an error rustls may have queued a fatal alert for the peer: encode it, to go out
    /// with what is written next. Only then: with nothing queued, rustls would go on reading.
    fn queue_alert(&mut self) {
        if !self.conn.wants_write() {
            return;
        }
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = self.conn.process_tls_records(&mut []).state {
            let _ = encode(&mut data, &mut self.outgoing);
        }
    }

    /// Copies decrypted bytes the reader had no room for before.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let waiting = &self.plaintext[self.plaintext_read..];
        let n = waiting.len().min(buf.remaining());
        buf.put_slice(&waiting[..n]);
        self.plaintext_read += n;
        if self.plaintext_read == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_read = 0;
        }
    }

    fn has_plaintext(&self) -> bool {
        self.plaintext_read < self.plaintext.len()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes out the ciphertext waiting, then frees its buffer.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.outgoing_sent < self.tls.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.tls.outgoing[self.tls.outgoing_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.outgoing_sent += n;
        }
        if self.tls.outgoing.capacity() != 0 {
            self.tls.outgoing = Vec::new();
            self.tls.outgoing_sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Gives the alert an error queued one chance to go out, then returns the error.
    fn fail(&mut self, cx: &mut Context<'_>, e: io::Error) -> Poll<io::Result<()>> {
        let _ = self.poll_send(cx);
        Poll::Ready(Err(e))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            if !self.tls.conn.is_handshaking() {
                return Pin::new(&mut self.io).poll_flush(cx);
            }
            if self.tls.peer_closed {
                return Poll::Ready(Err(closed_in_handshake()));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut input = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut input))?;
            if input.filled().is_empty() {
                return Poll::Ready(Err(closed_in_handshake()));
            }
            if let Err(e) = self.tls.run(input.filled_mut(), Goal::Nothing, None) {
                return self.fail(cx, e);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.tls.has_plaintext() {
            this.tls.take_plaintext(buf);
            return Poll::Ready(Ok(()));
        }
        this.tls.check()?;
        let before = buf.filled().len();
        loop {
            // What rustls answered while reading (its own key update) goes out as the socket
            // takes it.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || this.tls.peer_closed {
                // Data, or the end of the stream after the peer's close_notify.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut input = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut input))?;
            if input.filled().is_empty() {
                // Closed without close_notify: between records, the end of the stream (MQTT
                // packets carry their length, so a cut one shows); within a record, an error.
                if this.tls.incoming.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.tls.incoming = Vec::new();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection in the middle of a TLS record",
                )));
            }
            if let Err(e) = this.tls.run(input.filled_mut(), Goal::Nothing, Some(&mut *buf)) {
                return this.fail(cx, e);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.tls.check()?;
        if this.tls.closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS close_notify already sent")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Earlier ciphertext first: until it is out, nothing more is taken.
        ready!(this.poll_send(cx))?;
        match this.tls.run(&mut [], Goal::Write(buf), None) {
            Ok(Stop::Encrypted(n)) => {
                // Out now if the socket takes it, so that it is not kept. A failure shows at the
                // next write or flush, which tries again.
                let _ = this.poll_send(cx);
                Poll::Ready(Ok(n))
            }
            Ok(Stop::NeedInput) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake is not complete")))
            }
            Ok(Stop::Closed) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS connection is closed")))
            }
            Err(e) => {
                let _ = this.poll_send(cx);
                Poll::Ready(Err(e))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.failed {
            if !this.tls.closed {
                ready!(this.poll_send(cx))?;
                if let Err(e) = this.tls.run(&mut [], Goal::CloseNotify, None) {
                    let _ = this.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
                this.tls.closed = true;
            }
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Hands decrypted bytes to the reader as far as it has room, after any already waiting; keeps
/// the rest.
fn deliver(read: &mut Option<&mut ReadBuf<'_>>, plaintext: &mut Vec<u8>, mut data: &[u8]) {
    if plaintext.is_empty()
        && let Some(buf) = read
    {
        let n = buf.remaining().min(data.len());
        buf.put_slice(&data[..n]);
        data = &data[n..];
    }
    plaintext.extend_from_slice(data);
}

/// The length of the record `bytes` starts with, header included, once its header is there.
fn record_len(bytes: &[u8]) -> usize {
    match bytes {
        [_, _, _, hi, lo, ..] => (5 + usize::from(u16::from_be_bytes([*hi, *lo]))).min(MAX_RECORD),
        _ => 0,
    }
}

/// Appends a handshake record rustls has ready to `out`.
fn encode<D>(data: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    let needed = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
        Err(e) => return Err(io::Error::other(e)),
    };
    let start = out.len();
    out.resize(start + needed, 0);
    match data.encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(io::Error::other(e))
        }
    }
}

/// Appends `data`, encrypted, to `out`.
fn encrypt<D>(traffic: &mut WriteTraffic<'_, D>, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    // A record's header, content type, nonce and tag take less than 64 bytes.
    write_grown(out, data.len() + 64, |buf| traffic.encrypt(data, buf))
}

/// Appends a close_notify alert to `out`.
fn close_notify<D>(traffic: &mut WriteTraffic<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    write_grown(out, 64, |buf| traffic.queue_close_notify(buf))
}

/// Runs `write` on room appended to `out`, with more room as long as rustls asks for more.
fn write_grown(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn closed_in_handshake() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection during the TLS handshake")
}

//! The MQTT listener's TLS stream against a real rustls client over loopback TCP: handshakes
//! (TLS 1.3 and 1.2, full and resumed), data both ways in small and large pieces, records split
//! over reads and several in one, key updates, close_notify, broken input, and no buffer held
//! once a connection is idle.

use ferrocore_mqtt::tls::{TlsStream, accept};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

type Client = tokio_rustls::client::TlsStream<TcpStream>;

struct Certs {
    server: Arc<rustls::ServerConfig>,
    roots: rustls::RootCertStore,
}

/// A P-256 certificate for localhost and a server config like the one Ferrocore serves MQTT
/// with: TLS 1.3 and 1.2, stateless session tickets.
fn certs() -> Certs {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    server.send_tls13_tickets = 1;
    Certs { server: Arc::new(server), roots }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(certs: &Certs, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(certs.roots.clone())
            .with_no_client_auth(),
    )
}

fn tls13(certs: &Certs) -> Arc<rustls::ClientConfig> {
    client_config(certs, &[&rustls::version::TLS13])
}

/// A TCP connection: the server's end and the client's.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.unwrap().0, client.unwrap())
}

/// The server's stream (over `wrap` of its socket) and the client's, handshake done.
async fn connect_with<S: AsyncRead + AsyncWrite + Unpin>(
    certs: &Certs,
    client: Arc<rustls::ClientConfig>,
    wrap: impl FnOnce(TcpStream) -> S,
) -> (TlsStream<S>, Client) {
    let (server_tcp, client_tcp) = tcp_pair().await;
    let name = ServerName::try_from("localhost").unwrap();
    let (server, client) = tokio::join!(
        accept(certs.server.clone(), wrap(server_tcp)),
        tokio_rustls::TlsConnector::from(client).connect(name, client_tcp)
    );
    (server.unwrap(), client.unwrap())
}

async fn connect(certs: &Certs, client: Arc<rustls::ClientConfig>) -> (TlsStream<TcpStream>, Client) {
    connect_with(certs, client, |tcp| tcp).await
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Reads exactly `len` bytes in 8 KiB reads, as the MQTT session does.
async fn read_exact_chunked<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    let mut chunk = [0u8; 8 * 1024];
    while got.len() < len {
        let want = chunk.len().min(len - got.len());
        let n = r.read(&mut chunk[..want]).await.unwrap();
        assert_ne!(n, 0, "the stream ended after {} of {len} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// Sends `data` from the client and reads it on the server, then sends it back the other way,
/// each side writing while the other reads.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(server: &mut TlsStream<S>, client: &mut Client, data: &[u8]) {
    one_way(client, server, data, "the server got other bytes than the client sent").await;
    one_way(server, client, data, "the client got other bytes than the server sent").await;
}

/// Writes `data` on `from` while `to` reads it, and checks what arrived.
async fn one_way<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(from: &mut W, to: &mut R, data: &[u8], mismatch: &str) {
    let ((), got) = tokio::join!(
        async {
            from.write_all(data).await.unwrap();
            from.flush().await.unwrap();
        },
        read_exact_chunked(to, data.len())
    );
    assert!(got == data, "{mismatch} ({} bytes)", data.len());
}

#[tokio::test]
async fn small_and_large_data_go_both_ways() {
    let certs = certs();
    let (mut server, mut client) = connect(&certs, tls13(&certs)).await;
    assert_eq!(server.connection().protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    round_trip(&mut server, &mut client, b"hello").await;
    round_trip(&mut server, &mut client, &payload(300 * 1024)).await;
    round_trip(&mut server, &mut client, &payload(1)).await;
    // Many records that arrive together and a reader with a small buffer.
    let data = payload(100 * 1024);
    client.write_all(&data).await.unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut small = [0u8; 100];
    while got.len() < data.len() {
        let n = server.read(&mut small).await.unwrap();
        assert_ne!(n, 0);
        got.extend_from_slice(&small[..n]);
    }
    assert!(got == data);
}

#[tokio::test]
async fn tls12_clients_get_in() {
    let certs = certs();
    let (mut server, mut client) = connect(&certs, client_config(&certs, &[&rustls::version::TLS12])).await;
    assert_eq!(server.connection().protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    round_trip(&mut server, &mut client, b"hello").await;
    round_trip(&mut server, &mut client, &payload(300 * 1024)).await;
    client.shutdown().await.unwrap();
    assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
}

#[tokio::test]
async fn clients_resume_with_the_session_ticket() {
    let certs = certs();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config(&certs, &[version]);
        let (mut server, mut client) = connect(&certs, config.clone()).await;
        assert_eq!(client.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
        // A TLS 1.3 ticket comes after the handshake: the client takes it in with data.
        round_trip(&mut server, &mut client, b"ping").await;
        drop((server, client));
        let (mut server, mut client) = connect(&certs, config).await;
        assert_eq!(client.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{version:?}");
        assert_eq!(server.connection().handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        round_trip(&mut server, &mut client, b"ping").await;
    }
}

/// Reads and writes at most one byte per call, so every record is split over many reads and
/// every write of the server's goes out in pieces.
struct OneByte(TcpStream);

impl AsyncRead for OneByte {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let mut byte = [0u8; 1];
        let mut one = ReadBuf::new(&mut byte);
        let polled = Pin::new(&mut self.0).poll_read(cx, &mut one);
        if let Poll::Ready(Ok(())) = polled {
            buf.put_slice(one.filled());
        }
        polled
    }
}

impl AsyncWrite for OneByte {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, &buf[..buf.len().min(1)])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn records_split_byte_by_byte_are_put_together() {
    let certs = certs();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut server, mut client) = connect_with(&certs, client_config(&certs, &[version]), OneByte).await;
        round_trip(&mut server, &mut client, b"hello").await;
        round_trip(&mut server, &mut client, &payload(40 * 1024)).await;
        assert_eq!(server.buffered_capacity(), 0);
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn key_updates_from_the_client_are_followed() {
    let certs = certs();
    let (mut server, mut client) = connect(&certs, tls13(&certs)).await;
    for round in 0..3 {
        // The client's KeyUpdate asks the server for one in return.
        client.get_mut().1.refresh_traffic_keys().unwrap();
        round_trip(&mut server, &mut client, &payload(20 * 1024 + round)).await;
    }
    assert_eq!(server.buffered_capacity(), 0);
}

#[tokio::test]
async fn close_notify_ends_the_stream_both_ways() {
    let certs = certs();
    let (mut server, mut client) = connect(&certs, tls13(&certs)).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
    assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0, "the end stays the end");
    // The server may still answer, then closes in turn.
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    assert!(server.write_all(b"more").await.is_err(), "nothing is written after close_notify");
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    assert_eq!(server.buffered_capacity(), 0);
}

/// The client's socket and rustls connection, taken out of tokio-rustls to send raw records.
async fn raw_client(certs: &Certs) -> (TlsStream<TcpStream>, TcpStream, rustls::ClientConnection) {
    let (server, client) = connect(certs, tls13(certs)).await;
    let (tcp, conn) = client.into_inner();
    (server, tcp, conn)
}

fn records(conn: &mut rustls::ClientConnection, messages: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    for m in messages {
        conn.writer().write_all(m).unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
    }
    wire
}

#[tokio::test]
async fn several_records_in_one_read_and_a_cut_record_is_an_error() {
    let certs = certs();
    let (mut server, mut tcp, mut conn) = raw_client(&certs).await;
    let wire = records(&mut conn, &[b"one ", b"two ", b"three"]);
    // Everything in one segment but the last record's final bytes, then the end of the stream.
    tcp.write_all(&wire[..wire.len() - 3]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = vec![0u8; 8];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"one two ");
    let e = server.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

#[tokio::test]
async fn close_notify_alone_ends_the_stream() {
    let certs = certs();
    let (mut server, mut tcp, mut conn) = raw_client(&certs).await;
    let mut wire = records(&mut conn, &[b"bye"]);
    conn.send_close_notify();
    conn.write_tls(&mut wire).unwrap();
    // The socket stays open: the alert alone ends the stream.
    tcp.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), server.read_to_end(&mut got)).await;
    read.expect("close_notify did not end the stream").unwrap();
    assert_eq!(got, b"bye");
    assert_eq!(server.buffered_capacity(), 0);
}

#[tokio::test]
async fn a_clean_tcp_end_between_records_ends_the_stream() {
    let certs = certs();
    let (mut server, mut tcp, mut conn) = raw_client(&certs).await;
    tcp.write_all(&records(&mut conn, &[b"hi"])).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hi");
}

#[tokio::test]
async fn garbage_is_an_error_not_a_panic() {
    let certs = certs();
    let garbage: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
        &[
            0x17, 0x03, 0x03, 0x00, 0x20, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
            0x88, 0x99, 0x00, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99,
            0x00,
        ],
        &[0x16, 0x03, 0x03, 0xff, 0xff],
        &[0xff; 64],
    ];
    // Instead of a ClientHello.
    for bytes in garbage {
        let (server_tcp, mut client_tcp) = tcp_pair().await;
        let (accepted, _) = tokio::join!(accept(certs.server.clone(), server_tcp), async {
            client_tcp.write_all(bytes).await.unwrap();
            client_tcp.shutdown().await.unwrap();
        });
        assert!(accepted.is_err(), "{bytes:?}");
    }
    // After the handshake.
    for bytes in garbage {
        let (mut server, mut tcp, _conn) = raw_client(&certs).await;
        tcp.write_all(bytes).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{bytes:?}: {e}");
        assert!(server.read(&mut buf).await.is_err(), "a failed stream stays failed");
        assert!(server.write_all(b"x").await.is_err());
    }
    // A client that closes in the middle of the handshake.
    let (server_tcp, mut client_tcp) = tcp_pair().await;
    let (accepted, _) = tokio::join!(accept(certs.server.clone(), server_tcp), async {
        client_tcp.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01]).await.unwrap();
        client_tcp.shutdown().await.unwrap();
    });
    assert_eq!(accepted.err().map(|e| e.kind()), Some(std::io::ErrorKind::UnexpectedEof));
}

#[tokio::test]
async fn an_idle_stream_holds_no_buffer() {
    // The stream sits in every session's future: beside the socket, one pointer to the rest.
    let size = std::mem::size_of::<TlsStream<TcpStream>>();
    println!("TlsStream<TcpStream>: {size} bytes");
    assert!(size <= std::mem::size_of::<TcpStream>() + 8, "the stream takes {size} bytes");
    let certs = certs();
    let (mut server, mut client) = connect(&certs, tls13(&certs)).await;
    assert_eq!(server.buffered_capacity(), 0, "after the handshake");
    round_trip(&mut server, &mut client, &payload(300 * 1024)).await;
    assert_eq!(server.buffered_capacity(), 0, "after an exchange");
    // A reader with less room than a record leaves plaintext waiting, until it takes the rest.
    client.write_all(&payload(10_000)).await.unwrap();
    client.flush().await.unwrap();
    let mut small = [0u8; 1000];
    server.read_exact(&mut small).await.unwrap();
    assert!(server.buffered_capacity() > 0, "the rest of the record waits");
    let mut rest = vec![0u8; 9000];
    server.read_exact(&mut rest).await.unwrap();
    assert_eq!(server.buffered_capacity(), 0, "freed once taken");
}

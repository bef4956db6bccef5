//! `TlsConn` over loopback against real peers: tokio-rustls and raw rustls clients, a
//! tokio-rustls server for the client role, and `openssl s_client`. Covers TLS 1.2 and 1.3,
//! SNI and ALPN, records split byte by byte, large writes, key updates, EOF with and without
//! close_notify, a peer that never reads, and the refusals (stalled or truncated handshakes,
//! plain HTTP, h2-only ALPN, an untrusted backend).

mod tls_common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tls_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsingress::tls::{self, CertSource, TlsConn, TlsError, server};

const HANDSHAKE: Duration = Duration::from_secs(5);

/// Accept one connection on `listener` with the handle's server config.
async fn accept_one(
    listener: tokio::net::TcpListener,
    certs: Arc<tls::CertHandle>,
    timeout: Duration,
) -> Result<(TlsConn, tls::Accepted), TlsError> {
    let (tcp, _) = listener.accept().await.unwrap();
    TlsConn::accept(tcp, server::config(certs).unwrap(), timeout).await
}

type Client = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A tokio-rustls client with `config` for `host` against one `TlsConn::accept`: both results.
async fn handshake_pair(
    certs: &Arc<tls::CertHandle>,
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> (std::io::Result<Client>, Result<(TlsConn, tls::Accepted), TlsError>) {
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, certs.clone(), HANDSHAKE));
    let name = ServerName::try_from(host.to_string()).unwrap();
    let client = tokio_rustls::TlsConnector::from(config).connect(name, connect(addr).await).await;
    (client, server.await.unwrap())
}

#[tokio::test]
async fn echoes_over_tls13_and_tls12_and_reports_sni_alpn_and_certificate() {
    let pki = Pki::new("echo CA");
    let certs = handle(&pki, &["chat.example.com", "news.example.com"]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (c, s) = handshake_pair(&certs, pki.client(&["h2", "http/1.1"], &[version]), "news.example.com").await;
        let (mut c, (conn, accepted)) = (c.unwrap(), s.unwrap());
        assert_eq!(accepted.sni.as_deref(), Some("news.example.com"));
        assert_eq!(accepted.alpn.as_deref(), Some(&b"http/1.1"[..]), "h2 must never be chosen");
        assert_eq!(accepted.choice, Some(tls::table::Choice::Host));
        assert_eq!(accepted.certificate.as_ref().unwrap().source, CertSource::secret("test", "news.example.com"));
        assert_eq!(accepted.version, Some(version.version));
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert!(!accepted.resumed);
        let echo = tokio::spawn(echo(conn));
        for msg in [&b"hello"[..], &[7u8; 40_000][..]] {
            c.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
            if version == &rustls::version::TLS13 {
                // A key update from the client, answered by ours, mid-stream.
                c.get_mut().1.refresh_traffic_keys().unwrap();
            }
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let (total, clean) = echo.await.unwrap().unwrap();
        assert_eq!(total, 40_005);
        assert!(clean, "tokio-rustls' shutdown sends close_notify");
    }
}

/// Session resumption is left at rustls' defaults: a client that comes back to the same
/// server configuration resumes (TLS 1.3 tickets, TLS 1.2 session ids).
#[tokio::test]
async fn clients_resume_their_sessions() {
    let pki = Pki::new("resume CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let config = server::config(certs).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = tokio_rustls::TlsConnector::from(pki.client(&[], &[version]));
        let mut resumed = Vec::new();
        for _ in 0..2 {
            let (l, addr) = listener().await;
            let config = config.clone();
            let server = tokio::spawn(async move {
                let (tcp, _) = l.accept().await.unwrap();
                TlsConn::accept(tcp, config, HANDSHAKE).await
            });
            let name = ServerName::try_from("chat.example.com").unwrap();
            let mut c = client.connect(name, connect(addr).await).await.unwrap();
            let (conn, accepted) = server.await.unwrap().unwrap();
            resumed.push(accepted.resumed);
            // One round trip, so the client reads the session tickets sent after the handshake.
            let echoing = tokio::spawn(echo(conn));
            c.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.unwrap();
            c.shutdown().await.unwrap();
            echoing.await.unwrap().unwrap();
        }
        assert_eq!(resumed, [false, true], "{version:?}");
    }
}

/// No SNI gets the fallback; an unknown name gets it too, which a verifying client rejects
/// (counted as `certificate_rejected`). openssl below shows the unknown-name case by subject.
#[tokio::test]
async fn unknown_and_missing_sni_get_the_fallback_certificate() {
    let pki = Pki::new("sni CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, certs.clone(), HANDSHAKE));
    let mut cfg = (*pki.client(&[], &[])).clone();
    cfg.enable_sni = false;
    let client = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let c = client.connect(ServerName::try_from("wsingress.local").unwrap(), connect(addr).await).await;
    assert!(c.is_ok(), "the fallback is valid for wsingress.local");
    let (_conn, accepted) = server.await.unwrap().unwrap();
    assert_eq!(accepted.sni, None);
    assert_eq!(accepted.choice, Some(tls::table::Choice::Fallback));
    assert_eq!(accepted.certificate.unwrap().source, CertSource::SelfSigned);

    let (c, s) = handshake_pair(&certs, pki.client(&[], &[]), "other.example.com").await;
    assert!(c.is_err());
    let err = s.unwrap_err();
    assert_eq!(err.label(), "certificate_rejected", "{err}");
}

/// A raw rustls client whose ciphertext reaches the server one byte per TCP segment.
#[tokio::test]
async fn records_split_into_single_bytes_are_reassembled() {
    let pki = Pki::new("split CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (conn, _) = accept_one(listener, certs, HANDSHAKE).await.unwrap();
        echo(conn).await.unwrap()
    });
    let config = pki.client(&[], &[]);
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let client = tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = rustls::ClientConnection::new(config, "chat.example.com".try_into().unwrap()).unwrap();
        let mut got = Vec::new();
        let (mut written, mut closed) = (false, false);
        loop {
            if !c.is_handshaking() && !written {
                c.writer().write_all(&payload).unwrap();
                written = true;
            }
            if got.len() == payload.len() && !closed {
                c.send_close_notify();
                closed = true;
            }
            // Trickle out everything rustls wants to send, one byte per write.
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
            for b in &out {
                sock.write_all(std::slice::from_ref(b)).unwrap();
            }
            match c.read_tls(&mut sock) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => panic!("client read: {e}"),
            }
            c.process_new_packets().unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match c.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client plaintext: {e}"),
                }
            }
        }
        got
    });
    let got = tokio::time::timeout(TIMEOUT, client).await.unwrap().unwrap();
    assert_eq!(got, expected);
    let (total, clean) = tokio::time::timeout(TIMEOUT, server).await.unwrap().unwrap();
    assert_eq!(total, 20_000);
    assert!(clean);
}

/// 4 MiB each way at once, with the client reading in small pieces: every byte arrives in
/// order, and the server side never holds more than one record of ciphertext.
#[tokio::test]
async fn large_writes_both_ways_arrive_intact() {
    let pki = Pki::new("large CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let (listener, addr) = listener().await;
    const N: usize = 4 << 20;
    let server = tokio::spawn(async move {
        let (mut conn, _) = accept_one(listener, certs, HANDSHAKE).await.unwrap();
        // Read the client's 4 MiB while sending our own.
        let out: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
        let mut buf = vec![0u8; 64 * 1024];
        let (mut sent, mut got, mut max_held) = (0usize, Vec::with_capacity(N), 0usize);
        while sent < N || got.len() < N {
            let (want_read, want_write) = (got.len() < N, sent < N);
            let (which, r) = std::future::poll_fn(|cx| {
                if want_read && let std::task::Poll::Ready(r) = conn.poll_read_ready(cx) {
                    return std::task::Poll::Ready((0, r));
                }
                if want_write && let std::task::Poll::Ready(r) = conn.poll_write_ready(cx) {
                    return std::task::Poll::Ready((1, r));
                }
                std::task::Poll::Pending
            })
            .await;
            r.unwrap();
            if which == 0 {
                match conn.read_some(&mut buf) {
                    Ok(0) => panic!("early EOF"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            } else {
                match conn.try_write(&out[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                max_held = max_held.max(conn.held_bytes());
            }
        }
        flush(&mut conn).await.unwrap();
        (got, max_held)
    });
    let client = pki.client(&[], &[]);
    let c = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("chat.example.com").unwrap(), connect(addr).await)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(c);
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..N).map(|i| (i % 241) as u8).collect();
        wr.write_all(&data).await.unwrap();
        wr.flush().await.unwrap();
        wr
    });
    let mut back = vec![0u8; N];
    let mut off = 0;
    while off < N {
        let end = (off + 1000).min(N);
        let n = rd.read(&mut back[off..end]).await.unwrap();
        assert!(n > 0);
        off += n;
    }
    assert!(back.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
    let _wr = writer.await.unwrap();
    let (got, max_held) = tokio::time::timeout(TIMEOUT * 3, server).await.unwrap().unwrap();
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 241) as u8));
    assert_eq!(got.len(), N);
    println!("most the server held (one record out, one partial record in): {max_held} bytes");
    // At most one record of ciphertext out and one partial record in.
    assert!(max_held <= 2 * (16 * 1024 + 1024), "held {max_held} bytes");
}

/// The peer sends data and then stops reading for good: writes stall with at most one record
/// held, and reading its data still works.
#[tokio::test]
async fn a_peer_that_never_reads_cannot_make_it_buffer() {
    let pki = Pki::new("stall CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let (c, s) = handshake_pair(&certs, pki.client(&[], &[]), "chat.example.com").await;
    let (mut c, (mut conn, _)) = (c.unwrap(), s.unwrap());
    let chunk = vec![1u8; 64 * 1024];
    let mut accepted = 0usize;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "writes never stalled");
        match conn.try_write(&chunk) {
            Ok(n) => accepted += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Stalled: nothing more is taken until the peer reads.
                let ready = tokio::time::timeout(
                    Duration::from_millis(200),
                    std::future::poll_fn(|cx| conn.poll_write_ready(cx)),
                )
                .await;
                if ready.is_err() {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(conn.has_pending_write());
    assert!(conn.held_bytes() <= 16 * 1024 + 1024, "held {}", conn.held_bytes());
    assert!(accepted > 64 * 1024, "the socket buffers took {accepted}");
    // The other direction still flows.
    c.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 32];
    let n = read_some(&mut conn, &mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"still here");
}

#[tokio::test]
async fn eof_with_and_without_close_notify() {
    let pki = Pki::new("eof CA");
    let certs = handle(&pki, &["chat.example.com"]);
    for clean in [true, false] {
        let (c, s) = handshake_pair(&certs, pki.client(&[], &[]), "chat.example.com").await;
        let (mut c, (mut conn, _)) = (c.unwrap(), s.unwrap());
        c.write_all(b"last words").await.unwrap();
        c.flush().await.unwrap();
        if clean {
            c.shutdown().await.unwrap();
        } else {
            // FIN with no close_notify.
            let (tcp, _) = c.get_mut();
            tcp.shutdown().await.unwrap();
        }
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(TIMEOUT, read_some(&mut conn, &mut buf)).await.unwrap().unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, b"last words");
        assert_eq!(conn.received_close_notify(), clean);
        // Further reads keep saying EOF.
        assert_eq!(conn.read_some(&mut buf).unwrap(), 0);
        // And our own close_notify + FIN reach the client.
        conn.shutdown_write();
        flush(&mut conn).await.unwrap();
        if clean {
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    }
}

#[tokio::test]
async fn stalled_and_truncated_handshakes_fail_with_their_own_errors() {
    let pki = Pki::new("stall CA");
    let certs = handle(&pki, &["chat.example.com"]);
    // Nothing at all, then half a ClientHello: both time out.
    for prefix in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let (listener, addr) = listener().await;
        let started = Instant::now();
        let server = tokio::spawn(accept_one(listener, certs.clone(), Duration::from_millis(300)));
        let mut raw = connect(addr).await;
        raw.write_all(prefix).await.unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, TlsError::Timeout(_)), "{err}");
        assert_eq!(err.label(), "timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // Half a ClientHello and FIN: the end of the stream.
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, certs.clone(), HANDSHAKE));
    let mut raw = connect(addr).await;
    raw.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await.unwrap();
    raw.shutdown().await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.label(), "eof", "{err}");
    // Garbage that is not TLS: a protocol error, and an alert back.
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, certs, HANDSHAKE));
    let mut raw = connect(addr).await;
    raw.write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.label(), "protocol_error", "{err}");
    let mut back = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, raw.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back.first(), Some(&0x15), "a TLS alert record: {back:?}");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_400() {
    let pki = Pki::new("http CA");
    let certs = handle(&pki, &[]);
    let (listener, addr) = listener().await;
    let server = tokio::spawn(accept_one(listener, certs, HANDSHAKE));
    let mut raw = connect(addr).await;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: chat.example.com\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, raw.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.contains("Connection: close") && answer.ends_with("use https:// or wss://.\n"), "{answer}");
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.label(), "plaintext_http");
}

#[tokio::test]
async fn an_h2_only_client_is_refused_with_no_application_protocol() {
    let pki = Pki::new("alpn CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let (c, s) = handshake_pair(&certs, pki.client(&["h2"], &[]), "chat.example.com").await;
    let err = c.unwrap_err().to_string();
    assert!(err.contains("NoApplicationProtocol"), "{err}");
    let err = s.unwrap_err();
    assert!(matches!(err, TlsError::UnsupportedAlpn), "{err}");
    assert_eq!(err.label(), "unsupported_alpn");
}

/// The client side towards a tokio-rustls server: verification on, the server's TLS 1.3
/// tickets and a key update processed while data flows; a wrong CA is refused.
#[tokio::test]
async fn the_client_role_verifies_the_backend_and_survives_key_updates() {
    let pki = Pki::new("backend CA");
    let leaf = pki.leaf("backend", &["chat.default.svc"]);
    let chain = tls::material::certificates(leaf.cert_pem.as_bytes(), "leaf").unwrap();
    let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
        leaf.key_pem.as_bytes(),
    )
    .unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let (backend_listener, addr) = listener().await;
    let backend = tokio::spawn(async move {
        loop {
            let (tcp, _) = backend_listener.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(tcp).await else { continue };
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.get_mut().1.refresh_traffic_keys().unwrap();
            s.write_all(&buf).await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.shutdown().await.unwrap();
            return;
        }
    });
    let configs = tls::client::BackendConfigs::with_system_roots(rustls::RootCertStore::empty()).unwrap();
    let route_tls = |pem: &str| wsingress::routes::BackendTls {
        server_name: "chat.default.svc".into(),
        verify: wsingress::routes::BackendVerify::Ca(Arc::new(wsingress::routes::CaBundle {
            id: "default/ca".into(),
            pem: pem.as_bytes().to_vec(),
        })),
    };
    let dial = |pem: String| {
        let bt = route_tls(&pem);
        let config = configs.get("r", &bt).unwrap();
        async move { TlsConn::connect(connect(addr).await, config, tls::client::server_name(&bt).unwrap(), HANDSHAKE).await }
    };
    // A CA that did not sign the backend: refused.
    let err = dial(Pki::new("other CA").ca_pem).await.unwrap_err();
    assert_eq!(err.label(), "bad_certificate", "{err}");
    let mut conn = dial(pki.ca_pem.clone()).await.unwrap();
    for word in [b"hello", b"again"] {
        write_all(&mut conn, word).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 5 {
            let n = tokio::time::timeout(TIMEOUT, read_some(&mut conn, &mut buf)).await.unwrap().unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got, word);
    }
    let mut buf = [0u8; 16];
    assert_eq!(tokio::time::timeout(TIMEOUT, read_some(&mut conn, &mut buf)).await.unwrap().unwrap(), 0);
    assert!(conn.received_close_notify());
    backend.await.unwrap();
}

/// hyper's path: `AsyncRead`/`AsyncWrite` carry a whole exchange.
#[tokio::test]
async fn async_read_and_write_carry_an_exchange() {
    let pki = Pki::new("async CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut conn, _) = accept_one(listener, certs, HANDSHAKE).await.unwrap();
        let mut line = vec![0u8; 7];
        conn.read_exact(&mut line).await.unwrap();
        conn.write_all(&[line.as_slice(), &[9u8; 100_000]].concat()).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let client = pki.client(&[], &[]);
    let mut c = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("chat.example.com").unwrap(), connect(addr).await)
        .await
        .unwrap();
    c.write_all(b"request").await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(&back[..7], b"request");
    assert_eq!(back.len(), 100_007);
    c.shutdown().await.unwrap();
    assert!(server.await.unwrap().is_empty());
}

/// `openssl s_client` against the accept path: SNI picks the certificate (by subject), no SNI
/// gets the fallback, ALPN is never h2, and an h2-only offer fails.
#[tokio::test]
async fn openssl_s_client_sees_the_right_certificate_and_alpn() {
    let pki = Pki::new("openssl CA");
    let certs = handle(&pki, &["chat.example.com", "news.example.com"]);
    let (listener, addr) = listener().await;
    let config = server::config(certs).unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok((conn, _)) = TlsConn::accept(tcp, config, HANDSHAKE).await {
                    let _ = echo(conn).await;
                }
            });
        }
    });
    let s_client = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new("openssl")
                .arg("s_client")
                .arg("-connect")
                .arg(addr.to_string())
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the openssl CLI (Debian's openssl package) is needed for this test");
            // Closing stdin makes s_client send close_notify and exit.
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
        })
    };
    let out = s_client(vec!["-servername".into(), "news.example.com".into(), "-alpn".into(), "h2,http/1.1".into()])
        .await
        .unwrap();
    assert!(out.contains("subject=CN = news.example.com") || out.contains("subject=CN=news.example.com"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    let out = s_client(vec!["-servername".into(), "chat.example.com".into(), "-tls1_2".into()]).await.unwrap();
    assert!(out.contains("CN = chat.example.com") || out.contains("CN=chat.example.com"), "{out}");
    assert!(out.contains("TLSv1.2"), "{out}");
    let out = s_client(vec!["-noservername".into()]).await.unwrap();
    assert!(out.contains("CN = fallback") || out.contains("CN=fallback"), "{out}");
    let out =
        s_client(vec!["-servername".into(), "chat.example.com".into(), "-alpn".into(), "h2".into()]).await.unwrap();
    assert!(out.contains("no application protocol") || out.contains("alert number 120"), "{out}");
    assert!(!out.contains("ALPN protocol: h2"), "{out}");
}

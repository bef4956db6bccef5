//! What an idle TLS connection costs in heap, measured with a counting allocator: the
//! server side of 200 handshaken connections that each carried a 30 KB message both ways,
//! freed at once — `TlsConn` (rustls' unbuffered API, buffers borrowed per burst), a
//! tokio-rustls stream (rustls' buffered `ServerConnection`) and a plain `TcpStream` for the
//! socket's own share. The numbers go to docs/tls.md; the test fails if `TlsConn` grows
//! past its bound or stops beating the buffered connection.

mod tls_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use rustls::pki_types::ServerName;
use tls_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsingress::tls::{TlsConn, server};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator with the same arguments; the counter
// only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: usize = 200;
const MESSAGE: usize = 30_000;

/// Heap freed per connection when the server sides in `held` are dropped.
fn freed_per_connection<T>(held: Vec<T>) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    drop(held);
    (before - LIVE.load(Ordering::Relaxed)) / N as isize
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_tls_connection_holds_no_buffers() {
    let pki = Pki::new("memory CA");
    let certs = handle(&pki, &["chat.example.com"]);
    let config = server::config(certs).unwrap();
    let client = tokio_rustls::TlsConnector::from(pki.client(&[], &[]));
    let message = vec![5u8; MESSAGE];

    // TlsConn.
    let (listener, addr) = listener().await;
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..N {
        let connecting = client.connect(ServerName::try_from("chat.example.com").unwrap(), connect(addr).await);
        let (tcp, _) = listener.accept().await.unwrap();
        let (accepted, c) = tokio::join!(TlsConn::accept(tcp, config.clone(), TIMEOUT), connecting);
        let (mut conn, _) = accepted.unwrap();
        let mut c = c.unwrap();
        c.write_all(&message).await.unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < MESSAGE {
            got += read_some(&mut conn, &mut buf).await.unwrap();
        }
        write_all(&mut conn, &message).await.unwrap();
        let mut back = vec![0u8; MESSAGE];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(conn.held_bytes(), 0, "an idle TlsConn holds a buffer");
        servers.push(conn);
        clients.push(c);
    }
    let tls_conn = freed_per_connection(servers);
    drop(clients);

    // tokio-rustls (buffered ServerConnection), same exchange.
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..N {
        let connecting = client.connect(ServerName::try_from("chat.example.com").unwrap(), connect(addr).await);
        let (tcp, _) = listener.accept().await.unwrap();
        let (s, c) = tokio::join!(acceptor.accept(tcp), connecting);
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        c.write_all(&message).await.unwrap();
        let mut buf = vec![0u8; MESSAGE];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&message).await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        servers.push(s);
        clients.push(c);
    }
    let buffered = freed_per_connection(servers);
    drop(clients);

    // Plain TCP: the socket's own share (tokio's registration).
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..N {
        let c = connect(addr).await;
        let (s, _) = listener.accept().await.unwrap();
        servers.push(s);
        clients.push(c);
    }
    let plain = freed_per_connection(servers);

    let inline = std::mem::size_of::<TlsConn>();
    println!(
        "heap per idle server connection: TlsConn {tls_conn} B, tokio-rustls {buffered} B, plain TcpStream {plain} B; \
         TLS adds {} B (TlsConn) vs {} B (buffered); size_of::<TlsConn>() = {inline} B",
        tls_conn - plain,
        buffered - plain
    );
    assert!(tls_conn < buffered, "TlsConn ({tls_conn} B) should hold less than tokio-rustls ({buffered} B)");
    assert!(tls_conn - plain <= 6 * 1024, "an idle TlsConn grew to {tls_conn} B");
    assert!(inline <= 160, "TlsConn is {inline} B inline");
}

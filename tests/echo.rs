//! Loopback tests of `wsingress echo` with real clients (tokio-tungstenite, raw TCP for HTTP).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsingress::echo::{self, EchoConfig};

const DEADLINE: Duration = Duration::from_secs(10);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(prefix: &str, instance: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let config = EchoConfig { prefix: prefix.into(), instance: instance.into() };
        let task = tokio::spawn(echo::serve(listener, config, shutdown.clone()));
        Server { addr, shutdown, task }
    }

    async fn connect(&self, path: &str) -> (Client, http::Response<Option<Vec<u8>>>) {
        let url = format!("ws://{}{path}", self.addr);
        within(tokio_tungstenite::connect_async(url)).await.unwrap()
    }

    /// Stops the server and surfaces its result (and any panic).
    async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.unwrap().unwrap();
    }
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future).await.expect("timed out")
}

/// Next data or close message (skipping nothing: pings/pongs are returned too).
async fn next(client: &mut Client) -> Message {
    within(client.next()).await.expect("stream ended").unwrap()
}

/// A minimal HTTP/1.1 exchange over a raw socket: returns (status, headers lower-cased, body).
async fn http(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within(stream.read_to_end(&mut raw)).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("no end of headers");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    (status, headers, body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http(addr, &request).await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn echoes_text_binary_empty_and_large_messages_with_prefix() {
    let server = Server::start("echo: ", "one").await;
    let (mut client, _) = server.connect("/any/path").await;

    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("echo: hello"));

    client.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(b"echo: \x00\x01\x02\xff".to_vec()));

    client.send(Message::text("")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("echo: "));
    client.send(Message::binary(Vec::new())).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(b"echo: ".to_vec()));

    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    client.send(Message::binary(big.clone())).await.unwrap();
    let mut expected = b"echo: ".to_vec();
    expected.extend_from_slice(&big);
    match next(&mut client).await {
        Message::Binary(data) => assert!(data == expected, "1 MiB binary echo differs"),
        other => panic!("expected binary, got {other:?}"),
    }
    let big_text = "x".repeat(1 << 20);
    client.send(Message::text(big_text.clone())).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text(format!("echo: {big_text}")));

    client.close(None).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn without_prefix_the_echo_is_exact() {
    let server = Server::start("", "exact").await;
    let (mut client, _) = server.connect("/").await;
    client.send(Message::text("same")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("same"));
    client.send(Message::binary(vec![9u8; 3])).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(vec![9u8; 3]));
    drop(client); // hang up, so the server need not wait for a close reply
    server.stop().await;
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_and_echoed() {
    let server = Server::start("> ", "frag").await;
    let (mut client, _) = server.connect("/ws").await;

    // Text in three frames, with a ping between fragments (RFC 6455 section 5.4 allows control
    // frames in the middle of a fragmented message).
    let frames = [
        Frame::message(Bytes::from_static(b"frag"), OpCode::Data(Data::Text), false),
        Frame::message(Bytes::from_static(b"men"), OpCode::Data(Data::Continue), false),
        Frame::ping(Bytes::from_static(b"mid")),
        Frame::message(Bytes::from_static(b"ted"), OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        client.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(next(&mut client).await, Message::Pong(Bytes::from_static(b"mid")));
    assert_eq!(next(&mut client).await, Message::text("> fragmented"));

    // Binary in two frames.
    client
        .send(Message::Frame(Frame::message(Bytes::from_static(&[1, 2]), OpCode::Data(Data::Binary), false)))
        .await
        .unwrap();
    client
        .send(Message::Frame(Frame::message(Bytes::from_static(&[3]), OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, Message::binary(b"> \x01\x02\x03".to_vec()));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = Server::start("", "ping").await;
    let (mut client, _) = server.connect("/").await;
    client.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    assert_eq!(next(&mut client).await, Message::Pong(Bytes::from_static(b"are you there")));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn close_code_and_reason_are_echoed() {
    let server = Server::start("", "close").await;
    let (mut client, _) = server.connect("/").await;
    let frame = CloseFrame { code: CloseCode::Library(4321), reason: "bye now".into() };
    client.close(Some(frame.clone())).await.unwrap();
    assert_eq!(next(&mut client).await, Message::Close(Some(frame)));
    // Then the server ends the connection.
    assert!(within(client.next()).await.is_none());

    // A Close without a code is echoed without a code.
    let (mut client, _) = server.connect("/").await;
    client.close(None).await.unwrap();
    assert_eq!(next(&mut client).await, Message::Close(None));
    server.stop().await;
}

#[tokio::test]
async fn first_offered_subprotocol_is_selected_and_instance_is_on_the_101() {
    let server = Server::start("", "backend-a").await;
    let mut request = format!("ws://{}/chat", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "chat.v2, chat.v1".parse().unwrap());
    let (mut client, response) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    assert_eq!(response.headers()["x-echo-instance"], "backend-a");
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("hi"));

    // Without an offer, no subprotocol is chosen.
    let (second, response) = server.connect("/").await;
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    drop(second);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn headers_endpoint_reports_the_request_as_seen() {
    let server = Server::start("", "backend-b").await;
    let request = "GET /headers?a=1 HTTP/1.1\r\nHost: app.example.test\r\n\
                   X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\nX-Real-IP: 203.0.113.7\r\n\
                   X-Multi: one\r\nX-Multi: two\r\nConnection: close\r\n\r\n";
    let (status, headers, body) = http(server.addr, request).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-echo-instance"), Some("backend-b"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["instance"], "backend-b");
    assert_eq!(info["method"], "GET");
    assert_eq!(info["path"], "/headers");
    assert_eq!(info["query"], "a=1");
    assert_eq!(info["headers"]["host"], "app.example.test");
    assert_eq!(info["headers"]["x-forwarded-for"], "203.0.113.7, 10.0.0.1");
    assert_eq!(info["headers"]["x-real-ip"], "203.0.113.7");
    assert_eq!(info["headers"]["x-multi"], serde_json::json!(["one", "two"]));
    let remote = info["remote"].as_str().unwrap();
    assert!(remote.starts_with("127.0.0.1:"), "remote {remote}");
    server.stop().await;
}

#[tokio::test]
async fn headers_command_over_websocket_returns_the_upgrade_request() {
    let server = Server::start("p:", "backend-c").await;
    let mut request = format!("ws://{}/live?room=7", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", "198.51.100.2".parse().unwrap());
    let (mut client, _) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
    client.send(Message::text("__headers__")).await.unwrap();
    let Message::Text(json) = next(&mut client).await else {
        panic!("expected text");
    };
    let info: serde_json::Value = serde_json::from_str(json.as_str()).unwrap();
    assert_eq!(info["instance"], "backend-c");
    assert_eq!(info["method"], "GET");
    assert_eq!(info["path"], "/live");
    assert_eq!(info["query"], "room=7");
    assert_eq!(info["headers"]["x-forwarded-for"], "198.51.100.2");
    assert_eq!(info["headers"]["upgrade"], "websocket");
    assert!(info["headers"]["sec-websocket-key"].is_string());

    // Only the first text message is a command; later it is echoed like any other.
    client.send(Message::text("__headers__")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("p:__headers__"));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn page_health_and_not_found() {
    let server = Server::start("", "page").await;

    let (status, headers, body) = get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-echo-instance"), Some("page"));
    assert!(header(&headers, "content-type").unwrap().starts_with("text/html"));
    assert!(body.contains("<title>wsingress echo</title>"));
    assert!(body.contains(r#"<ul id="log">"#));
    assert!(body.contains(r#"<p id="status""#));
    assert!(body.contains("new WebSocket(url)"));
    assert!(body.contains(r#"location.host + "/ws""#));
    assert!(body.contains("done: "));
    assert!(body.contains(r#"<code id="instance">page</code>"#));
    // Self-contained: no external scripts, styles or images.
    assert!(!body.contains("src=\"http"));
    assert!(!body.contains("href=\"http"));
    assert!(!body.contains("@import"));

    let (status, headers, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(header(&headers, "x-echo-instance"), Some("page"));

    let (status, headers, _) = get(server.addr, "/nope").await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "x-echo-instance"), Some("page"));

    let request =
        format!("POST /headers HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", server.addr);
    let (status, headers, _) = http(server.addr, &request).await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_answered_and_the_server_keeps_serving() {
    let server = Server::start("", "robust").await;

    // An upgrade without a key: 400, with the instance header ("close" so the read ends).
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let (status, headers, _) = http(server.addr, &request).await;
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "x-echo-instance"), Some("robust"));

    // Garbage instead of HTTP: the server answers 400 or hangs up, and lives on.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"\x16\x03\x01 not http at all\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = within(stream.read_to_end(&mut sink)).await;

    // Invalid UTF-8 in a text frame: Close 1007.
    let (mut client, _) = server.connect("/").await;
    client
        .send(Message::Frame(Frame::message(Bytes::from_static(&[0xff, 0xfe]), OpCode::Data(Data::Text), true)))
        .await
        .unwrap();
    match next(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Invalid),
        other => panic!("expected close 1007, got {other:?}"),
    }

    let (status, _, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_1001_and_stops_accepting() {
    let server = Server::start("", "going").await;
    let addr = server.addr;
    let (mut first, _) = server.connect("/").await;
    let (mut second, _) = server.connect("/").await;
    // An idle keep-alive HTTP connection must not hold shutdown up.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = within(idle.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    server.shutdown.cancel();
    for client in [&mut first, &mut second] {
        match next(client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
        // Reading on lets tokio-tungstenite answer the Close; the server then hangs up.
        while let Some(Ok(_)) = within(client.next()).await {}
    }
    within(server.task).await.unwrap().unwrap();

    // The idle connection was closed and the listener is gone.
    let n = within(idle.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(TcpStream::connect(addr).await.is_err());
}

/// manifests/echo.yaml gives the echo 128 MiB: an idle WebSocket must cost it kilobytes.
/// tungstenite's default read buffer (128 KiB, allocated up front per connection) put that
/// limit at about 900 clients. The echo runs as its own process (the release of this build),
/// held by 400 raw-socket clients that upgrade and then stay silent.
#[test]
fn an_idle_connection_costs_the_echo_server_kilobytes() {
    use std::io::{BufRead, BufReader, Read, Write};
    if !std::path::Path::new("/proc/self/status").exists() {
        println!("skipped: no /proc to read the echo server's resident memory from");
        return;
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["echo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start wsingress echo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let child = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("echo exited before listening").unwrap();
        if line.contains("echo server listening") {
            let start = line.find("local=").unwrap() + "local=".len();
            break line[start..].split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let pid = child.0.id();
    let open = || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let req = "GET / HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "the echo closed during the handshake");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        s
    };
    // Warm up the runtime and allocator with a few connections first.
    let warm: Vec<_> = (0..20).map(|_| open()).collect();
    let before = common::rss_kib(pid);
    let held: Vec<_> = (0..400).map(|_| open()).collect();
    let after = common::rss_kib(pid);
    let per_conn = after.saturating_sub(before) * 1024 / 400;
    println!("echo resident memory: {before} KiB -> {after} KiB with 400 idle WebSockets ({per_conn} B each)");
    assert!(per_conn < 48 * 1024, "an idle WebSocket costs the echo server {per_conn} B");
    drop((warm, held));
}

//! Plain HTTP through the proxy: forwarding, pooled backend connections, bodies, hop-by-hop
//! handling, routing errors and `websocket-only` routes.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsingress::routes::RouteSettings;

/// A backend that answers every request with its method, its body length and the headers it
/// saw, plus a hop-by-hop field of its own that must not reach the client.
async fn body_backend() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let method = req.method().to_string();
                    let headers: Vec<String> =
                        req.headers().iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let text = format!("{method} {}\n{}\n", body.len(), headers.join("\n"));
                    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
                    resp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
                    resp.headers_mut().insert("x-backend", "body".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn requests_and_bodies_are_forwarded_without_hop_by_hop_fields() {
    let b = body_backend().await;
    let p = proxy(&[b], &[]).await;
    let body = "x".repeat(100_000);
    let req = format!(
        "POST /upload?id=7 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: {}\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n{body}",
        body.len()
    );
    let (status, head, resp) = http_raw(p.proxy_addr, &req).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("POST 100000\n"), "{text}");
    assert!(text.contains("host: api.example.com"), "Host preserved: {text}");
    assert!(text.contains("x-kept: yes"));
    assert!(text.contains("x-forwarded-for: 127.0.0.1"));
    assert!(text.contains("x-real-ip: 127.0.0.1"));
    assert!(!text.contains("x-hop"), "fields named in Connection are dropped: {text}");
    assert!(!text.contains("te: trailers"), "TE is hop-by-hop: {text}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-backend: body"));
    assert!(!head.contains("keep-alive: timeout"), "the backend's Keep-Alive is hop-by-hop: {head}");
}

#[tokio::test]
async fn backend_connections_are_reused_across_requests() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    // Two requests on one client connection, then one on another: one backend connection serves all.
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    let mut remotes = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (status, body) = read_response(&mut s).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        remotes.push(v["remote"].as_str().unwrap().to_string());
    }
    let (_, _, body) = http_get(p.proxy_addr, "x", "/headers").await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    remotes.push(v["remote"].as_str().unwrap().to_string());
    assert!(remotes.iter().all(|r| r == &remotes[0]), "backend connections were not pooled: {remotes:?}");
}

/// Read one response with a Content-Length body from a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, head, _) = parse_response(&buf);
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            if buf.len() >= end + 4 + len {
                return (status, buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
}

#[tokio::test]
async fn routing_errors_and_websocket_only_routes() {
    let e = echo("e1", "").await;
    let p = manual_proxy(&[]).await;
    let ws_only = RouteSettings { websocket_only: true, ..RouteSettings::default() };
    let mut t = table(&[("chat.example.com", "/", "default/chat", &[e.addr])], RouteSettings::default());
    let only = table(&[("ws.example.com", "/", "default/ws", &[e.addr])], ws_only);
    let mut rules = t.rules().to_vec();
    rules.extend(only.rules().iter().cloned());
    t = wsingress::routes::RouteTable::new(rules, None);
    p.publisher().publish(t, &[]);
    assert_eq!(http_get(p.proxy_addr, "chat.example.com", "/headers").await.0, 200);
    assert_eq!(http_get(p.proxy_addr, "unknown.example.com", "/headers").await.0, 404);
    let (status, _, body) = http_get(p.proxy_addr, "ws.example.com", "/").await;
    assert_eq!(status, 426, "{}", String::from_utf8_lossy(&body));
    // ...while an upgrade on the same route works.
    let (mut ws, _) = connect_with(&ws_url(p.proxy_addr, "/"), &[("Host", "ws.example.com")]).await.unwrap();
    assert_eq!(round_trip(&mut ws, "ok").await, "ok");
    let unmatched = p.metrics.http_requests.with_label_values(&["unmatched", "4xx"]).get();
    assert_eq!(unmatched, 1);
}

#[tokio::test]
async fn dead_backends_give_502_and_empty_pools_503() {
    let p = proxy(&[dead_addr().await], &[]).await;
    assert_eq!(http_get(p.proxy_addr, "x", "/").await.0, 502);
    let m = manual_proxy(&[]).await;
    m.publisher().publish(table(&[("", "/", "default/empty", &[])], RouteSettings::default()), &[]);
    let (status, head, _) = http_get(m.proxy_addr, "x", "/").await;
    assert_eq!(status, 503);
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"));
}

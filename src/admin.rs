//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (every task that must
//! keep running still runs: 503 naming the dead ones otherwise), `/readyz` (routes loaded and
//! not draining), `/routes` (the current route table as JSON, with the certificate each host
//! gets) and, with `serve --admin-drain`, `/drain` (a preStop hook's way to drain before
//! SIGTERM).
//! It runs on its own port (default 0.0.0.0:9090); the proxy port never serves these paths.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::routes::RouteHandle;
use crate::tls::CertHandle;

/// Content type of the Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client that has not sent its request head after this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, how long open admin connections get to finish their response.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the admin endpoints read. Cheap to clone (a few `Arc`s).
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub routes: Arc<RouteHandle>,
    /// When set, `/routes` gains a `tls` section: the certificate each host gets.
    pub certs: Option<Arc<CertHandle>>,
}

/// `GET /drain?after=DURATION` (`serve --admin-drain`): what SIGTERM does, without exiting, for
/// a native sidecar whose SIGTERM comes only after its app has stopped. Readiness turns false at
/// once; after `after` (time for the pod's endpoint to leave the Service) every tunnel gets
/// Close 1001 and the answer waits until they are closed or `timeout` passed. The process keeps
/// running (not accepting) until its SIGTERM.
#[derive(Debug, Clone)]
pub struct AdminDrain {
    pub drain: Drain,
    pub timeout: Duration,
}

/// The longest `after` a `/drain` request may ask for.
const MAX_DRAIN_DELAY: Duration = Duration::from_secs(600);

/// Serve the admin endpoints on `listener` until `shutdown` fires; then stop accepting and
/// give open connections [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_with_drain(listener, state, None, shutdown).await
}

/// [`serve`], plus `/drain` when `drain` is given.
pub async fn serve_with_drain(
    listener: TcpListener,
    state: AdminState,
    drain: Option<AdminDrain>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection failures (EMFILE, ECONNABORTED) must not stop the admin
                    // port; back off briefly so a descriptor shortage does not spin.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let drain = drain.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let drain = drain.clone();
                async move {
                    let response = match &drain {
                        Some(d) if req.uri().path() == "/drain" => drain_request(&state, d, &req).await,
                        _ => respond(&state, &req),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The whole admin API: a pure function of the request line and the shared state.
fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    route_request(state, req.method(), req.uri().path())
}

fn route_request(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/routes");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/metrics" => body(StatusCode::OK, METRICS_CONTENT_TYPE, state.metrics.encode().into()),
        "/healthz" => {
            let failures = state.readiness.health().failures();
            if failures.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("unhealthy: {}\n", failures.join("; ")))
            }
        }
        "/readyz" => {
            if state.readiness.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("{}\n", state.readiness.reason()))
            }
        }
        _ => routes_json(state),
    }
}

/// `/routes`: the table's view, plus `tls` when certificates are wired.
#[derive(serde::Serialize)]
struct RoutesDoc {
    #[serde(flatten)]
    table: crate::routes::TableView,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<crate::tls::TlsView>,
}

async fn drain_request(state: &AdminState, d: &AdminDrain, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    let after = match drain_delay(req.uri().query()) {
        Ok(after) => after,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    state.readiness.set_draining();
    tracing::info!(after_s = after.as_secs_f64(), "drain requested on the admin port; readiness is now false");
    tokio::time::sleep(after).await;
    d.drain.start();
    let open = d.drain.active();
    tracing::info!(open_connections = open, timeout_s = d.timeout.as_secs_f64(), "draining (admin /drain)");
    if d.drain.wait(d.timeout).await {
        text(StatusCode::OK, &format!("drained: {open} connections closed\n"))
    } else {
        let left = d.drain.active();
        tracing::warn!(still_open = left, "drain timeout passed (admin /drain)");
        text(StatusCode::OK, &format!("drain timeout passed: {left} of {open} connections still open\n"))
    }
}

/// `after=DURATION` from the query (default 0), at most [`MAX_DRAIN_DELAY`].
fn drain_delay(query: Option<&str>) -> Result<Duration, String> {
    let mut after = Duration::ZERO;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("after", value)) => after = crate::translate::units::parse_duration(value)?,
            _ => return Err(format!("unknown parameter {pair:?} (only after=DURATION)")),
        }
    }
    if after > MAX_DRAIN_DELAY {
        return Err(format!("after={after:?} is longer than {MAX_DRAIN_DELAY:?}"));
    }
    Ok(after)
}

fn routes_json(state: &AdminState) -> Response<Full<Bytes>> {
    let table = state.routes.load();
    let tls = state.certs.as_ref().map(|c| {
        c.view(table.rules().iter().map(|r| r.host.to_string()).collect::<Vec<_>>().iter().map(String::as_str))
    });
    match serde_json::to_vec_pretty(&RoutesDoc { table: table.view(), tls }) {
        Ok(mut json) => {
            json.push(b'\n');
            body(StatusCode::OK, "application/json", json.into())
        }
        Err(e) => {
            tracing::error!(error = %e, "serialising /routes failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise routes\n")
        }
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", Bytes::copy_from_slice(msg.as_bytes()))
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Endpoint, Pool, Route, RouteSettings, RouteTable};
    use http_body_util::BodyExt;

    fn state() -> AdminState {
        let routes = Arc::new(RouteHandle::new());
        AdminState {
            metrics: Arc::new(Metrics::new().unwrap()),
            readiness: Arc::new(Readiness::new(routes.clone())),
            routes,
            certs: None,
        }
    }

    async fn call(s: &AdminState, method: Method, path: &str) -> (StatusCode, String, String) {
        let r = route_request(s, &method, path);
        let status = r.status();
        let ct = r.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(b.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_readiness_latch() {
        let s = state();
        let (st, _, b) = call(&s, Method::GET, "/readyz").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b, "waiting for the first route table\n");
        s.routes.publish(RouteTable::single(Route {
            id: "static/upstream".into(),
            backend: "static:upstream".into(),
            pool: Pool::new(vec![Endpoint::new("127.0.0.1:9".parse().unwrap(), true)]),
            settings: RouteSettings::default(),
        }));
        assert_eq!(
            call(&s, Method::GET, "/readyz").await,
            (StatusCode::OK, "text/plain; charset=utf-8".into(), "ready\n".into())
        );
        s.readiness.set_draining();
        let (st, _, b) = call(&s, Method::GET, "/readyz").await;
        assert_eq!((st, b.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "draining\n"));
        // Liveness does not care about readiness.
        assert_eq!(call(&s, Method::GET, "/healthz").await.0, StatusCode::OK);
        // It fails once a task that must keep running died.
        s.readiness.health().fail("watch Ingress", "panicked: boom");
        let (st, _, b) = call(&s, Method::GET, "/healthz").await;
        assert_eq!((st, b.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unhealthy: watch Ingress: panicked: boom\n"));
    }

    #[tokio::test]
    async fn routes_shows_the_certificate_of_each_host() {
        use crate::routes::{HostMatch, PathMatch, Rule};
        use crate::tls::{CertSource, CertTable, generate, material};
        let mut s = state();
        let now = crate::tls::unix_now();
        let load = |g: generate::Generated, source| {
            Arc::new(
                material::load(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), source, now, &crate::tls::provider())
                    .unwrap(),
            )
        };
        let fallback = generate::default_certificate(now, &crate::tls::provider()).unwrap();
        let certs = Arc::new(CertHandle::new(Arc::new(fallback)));
        let chat = generate::self_signed("chat", &["chat.example.com"], generate::Validity::around(now, 1)).unwrap();
        certs.publish(CertTable::new(
            vec![("chat.example.com".into(), load(chat, CertSource::secret("prod", "chat-tls")))],
            None,
        ));
        s.certs = Some(certs);
        let route = Arc::new(Route {
            id: "prod/chat".into(),
            backend: "chat:80".into(),
            pool: Pool::new(vec![]),
            settings: RouteSettings::default(),
        });
        let rule =
            |host: &str| Rule { host: HostMatch::parse(host), path: PathMatch::prefix("/"), route: route.clone() };
        s.routes.publish(RouteTable::new(vec![rule("chat.example.com"), rule("other.example.com")], None));
        let (st, _, body) = call(&s, Method::GET, "/routes").await;
        assert_eq!(st, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["generation"], 1);
        assert_eq!(v["rules"].as_array().unwrap().len(), 2);
        let hosts = v["tls"]["hosts"].as_array().unwrap();
        let of = |h: &str| hosts.iter().find(|x| x["host"] == h).unwrap().clone();
        assert_eq!(of("chat.example.com")["certificate"]["subject"], "CN=chat");
        assert_eq!(of("chat.example.com")["certificate"]["source"]["name"], "chat-tls");
        assert_eq!(of("chat.example.com")["choice"], "host");
        assert_eq!(of("other.example.com")["choice"], "fallback");
        assert!(of("chat.example.com")["certificate"]["serial"].as_str().unwrap().contains(':'));
        assert!(v["tls"]["fallback"]["not_after"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn drain_delay_reads_after_and_refuses_the_rest() {
        assert_eq!(drain_delay(None), Ok(Duration::ZERO));
        assert_eq!(drain_delay(Some("after=5s")), Ok(Duration::from_secs(5)));
        assert_eq!(drain_delay(Some("after=250ms")), Ok(Duration::from_millis(250)));
        assert!(drain_delay(Some("after=soon")).is_err());
        assert!(drain_delay(Some("now=1")).is_err());
        assert!(drain_delay(Some("after=1h")).is_err());
    }

    #[tokio::test]
    async fn unknown_paths_404_and_other_methods_405() {
        // Without --admin-drain there is no /drain.
        assert_eq!(call(&state(), Method::GET, "/drain").await.0, StatusCode::NOT_FOUND);
        let s = state();
        assert_eq!(call(&s, Method::GET, "/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&s, Method::GET, "/metrics/x").await.0, StatusCode::NOT_FOUND);
        let r = route_request(&s, &Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET");
        let (st, ct, b) = call(&s, Method::GET, "/metrics").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(ct, METRICS_CONTENT_TYPE);
        assert!(b.contains("wsingress_build_info{version="), "{b}");
    }
}

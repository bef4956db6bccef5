//! Admin listener (minimal placeholder until the observability work lands): /healthz, /readyz, /metrics, /routes.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::routes::RouteHandle;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub routes: Arc<RouteHandle>,
}

pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let (status, body): (StatusCode, Vec<u8>) = match req.uri().path() {
                        "/healthz" => (StatusCode::OK, b"ok\n".to_vec()),
                        "/readyz" if state.readiness.is_ready() => {
                            (StatusCode::OK, b"ready\n".to_vec())
                        }
                        "/readyz" => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{}\n", state.readiness.reason()).into_bytes(),
                        ),
                        "/metrics" => (StatusCode::OK, state.metrics.encode()),
                        "/routes" => (
                            StatusCode::OK,
                            serde_json::to_vec_pretty(&state.routes.load().view())
                                .unwrap_or_default(),
                        ),
                        _ => (StatusCode::NOT_FOUND, b"not found\n".to_vec()),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

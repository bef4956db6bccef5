//! wsingress: a Kubernetes ingress controller and sidecar proxy built for WebSocket traffic first.
//!
//! ```text
//!  Kubernetes API ──reflectors──┐
//!  manifests file ──hot reload──┼──> translate (pure) ──> RouteTable (Arc, swapped atomically)
//!  --upstream ADDR (sidecar) ───┘                               │ read per new connection
//!                                                               v
//!  client ──TCP/HTTP1.1──> proxy::server ─> router ─> balancer ─> upstream connect
//!                              │  plain HTTP: forward (hop-by-hop stripped, X-Forwarded-*)
//!                              │  Upgrade: websocket: handshake upstream first, answer 101 with upstream's headers
//!                              v
//!                          relay (frame-aware, bytes forwarded unchanged) ─> metrics
//!  admin port: /metrics /healthz /readyz /routes
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod client;
pub mod drain;
pub mod echo;
pub mod gateway_api;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod readiness;
pub mod routes;
pub mod source;
pub mod tls;
pub mod translate;
pub mod ws;

//! Traffic policy decisions the proxy asks for before and during a tunnel: how many live
//! connections a client or a route may hold, and a route's per-client policy (source
//! ranges, connections and handshakes per client address). Decides only; never sends bytes.

pub mod clients;
pub mod limits;

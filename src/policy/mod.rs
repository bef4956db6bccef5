//! Traffic policy decisions the proxy asks for before and during a tunnel: how many live
//! connections a client or a route may hold, a route's per-client policy (source ranges,
//! connections and handshakes per client address), which endpoint an affinity cookie names,
//! which tunnel rebalancing closes when. Decides only; never sends bytes.

pub mod affinity;
pub mod clients;
pub mod limits;
pub mod rebalance;

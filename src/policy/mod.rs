//! Traffic policy decisions the proxy asks for before and during a tunnel: how many live
//! connections a client or a route may hold, which endpoint an affinity cookie names, which
//! tunnel rebalancing closes when. Decides only; never sends bytes.

pub mod affinity;
pub mod limits;
pub mod rebalance;

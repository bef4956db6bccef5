//! Traffic policy decisions the proxy asks for before and during a tunnel: how many live
//! connections a client or a route may hold. Decides only; never sends bytes.

pub mod limits;

//! RFC 6455 framing without I/O: a streaming frame-header scanner that follows a byte
//! stream without copying or modifying it and refuses frame headers that break RFC 6455,
//! close-code rules, and encoders for the few control frames the proxy injects itself
//! (ping, close).

pub mod close;
pub mod frame;

pub use frame::{Role, ScanError, Scanner, Summary, encode_control};

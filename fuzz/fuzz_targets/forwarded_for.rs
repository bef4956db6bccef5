//! Fuzz target: the right-to-left X-Forwarded-For walk (`proxy::client_addr`,
//! `TrustedProxies::resolve` and `Hop::parse`) over arbitrary field lines, peers and trusted
//! lists. Invariants in `fuzz/shared/client_addr_checks.rs` (no panic, agreement with a slow
//! reference walk, one line or several alike, the client is the peer or a named address).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../shared/client_addr_checks.rs"]
mod client_addr_checks;

fuzz_target!(|input: &[u8]| client_addr_checks::check_forwarded_for(input));

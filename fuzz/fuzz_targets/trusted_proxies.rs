//! Fuzz target: the `--trusted-proxies` CIDR parser (`proxy::client_addr::Cidr`,
//! `TrustedProxies`) over arbitrary text and probe addresses. Invariants in
//! `fuzz/shared/client_addr_checks.rs` (no panic, round trips, IPv4-mapped entries are IPv4).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../shared/client_addr_checks.rs"]
mod client_addr_checks;

fuzz_target!(|input: &[u8]| client_addr_checks::check_trusted_proxies(input));

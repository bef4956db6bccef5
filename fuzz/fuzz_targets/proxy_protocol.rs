//! Fuzz target: the PROXY protocol v1/v2 header parser (`proxy::proxy_protocol::parse`) over
//! arbitrary bytes. Invariants in `fuzz/shared/proxy_protocol_checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../shared/proxy_protocol_checks.rs"]
mod proxy_protocol_checks;

fuzz_target!(|input: &[u8]| proxy_protocol_checks::check(input));

//! Fuzz target: the front door's strict request-head parser, the path normaliser and the
//! chunked decoder (`proxy::http1`) over arbitrary bytes. The invariants live in
//! `http1::check_invariants`, shared with the corpus replay in `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsingress::proxy::http1::check_invariants(data);
});

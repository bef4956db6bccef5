//! Shared by the `proxy_protocol` fuzz target and `tests/fuzz_regressions.rs`: the invariants
//! the PROXY protocol parser (`proxy::proxy_protocol::parse`) keeps for any input.

use wsingress::proxy::proxy_protocol::{Parsed, V1_MAX, V2_FIXED, parse, starts_header};

/// Invariants: parsing never panics; a complete header fits in the input, parses the same
/// from exactly its own bytes, is announced by its signature, and (v1) is at most 107 bytes;
/// every shorter prefix of it is incomplete (the reader consumes incomplete input whole, so a
/// prefix must never be refused or taken for another header); an incomplete input that knows
/// its length knows a length beyond what it has.
pub fn check(input: &[u8]) {
    match parse(input) {
        Ok(Parsed::Complete(h)) => {
            assert!(h.len <= input.len(), "header of {} bytes in {}", h.len, input.len());
            assert_eq!(parse(&input[..h.len]), Ok(Parsed::Complete(h)), "the header alone parses the same");
            assert_eq!(starts_header(input), Some(true));
            match h.version {
                1 => assert!(h.len <= V1_MAX),
                2 => assert!(h.len >= V2_FIXED),
                v => panic!("version {v}"),
            }
            for cut in 0..h.len.min(300) {
                assert!(
                    matches!(parse(&input[..cut]), Ok(Parsed::Incomplete { .. })),
                    "prefix of {cut} bytes: {:?}",
                    parse(&input[..cut])
                );
            }
        }
        Ok(Parsed::Incomplete { need }) => {
            if let Some(n) = need {
                assert!(n > input.len(), "needs {n} but has {}", input.len());
            }
            assert_ne!(starts_header(input), Some(false), "an incomplete header starts like one");
        }
        Err(_) => {}
    }
}

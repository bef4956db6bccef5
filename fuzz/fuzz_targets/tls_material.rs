//! Fuzz target: certificate material from untrusted Secrets (`tls::material::load` and
//! `ca_roots`): PEM text, X.509 and private keys of any shape. Invariants: no panic; the
//! result depends only on the input; a success is a certificate valid at the given time.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsingress::tls::{self, CertSource, material};

#[derive(Debug, Arbitrary)]
struct Input {
    cert: Vec<u8>,
    key: Vec<u8>,
    now: i64,
}

fuzz_target!(|input: Input| {
    let provider = tls::provider();
    let first = material::load(&input.cert, &input.key, CertSource::SelfSigned, input.now, &provider);
    let second = material::load(&input.cert, &input.key, CertSource::SelfSigned, input.now, &provider);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.info, b.info);
            assert!(a.info.not_before <= input.now && input.now <= a.info.not_after);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("the same material loaded once and failed once"),
    }
    let _ = material::ca_roots(&input.cert);
});

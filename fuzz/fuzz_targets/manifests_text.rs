//! Fuzz target: the manifests-file loader (`source::file::load`) over arbitrary text.
//! Invariants: no panic (a bad file is an error or warnings, never a crash); loading is
//! deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsingress::source::file;
use wsingress::translate::Defaults;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let defaults = Defaults::default();
    let first = file::load(text, &defaults);
    let second = file::load(text, &defaults);
    match (first, second) {
        (Ok((a, wa)), Ok((b, wb))) => {
            assert!(file::same_routes(&a, &b), "the same text gave two tables");
            assert_eq!(wa.len(), wb.len());
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("the same text loaded differently: {:?} vs {:?}", a.is_ok(), b.is_ok()),
    }
});

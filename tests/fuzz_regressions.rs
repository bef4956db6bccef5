//! Fuzz findings and seeds as ordinary tests, so they run on every `cargo test` without
//! nightly features: every checked-in input under `fuzz/corpus/scanner`,
//! `fuzz/corpus/request_head`, `fuzz/corpus/manifests_text`, `fuzz/corpus/trusted_proxies`,
//! `fuzz/corpus/forwarded_for` and `fuzz/corpus/proxy_protocol` is replayed through the same
//! invariants as the fuzz targets (a finding is fixed by copying its input there), plus the
//! specific findings.

use std::path::Path;

use wsingress::source::file;
use wsingress::translate::Defaults;
use wsingress::ws::{Role, ScanError, Scanner, Summary};

#[path = "../fuzz/shared/frame_reference.rs"]
mod frame_reference;

#[path = "../fuzz/shared/client_addr_checks.rs"]
mod client_addr_checks;

#[path = "../fuzz/shared/proxy_protocol_checks.rs"]
mod proxy_protocol_checks;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// What scanning a stream in the given pieces observed (stream offsets).
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    counts: (u64, u64, u64, u64),
    close_seen: bool,
    close_code: Option<u16>,
    last_boundary: Option<usize>,
    error: Option<ScanError>,
}

fn scan(sender: Role, limit: Option<u64>, stream: &[u8], piece: usize) -> Seen {
    let mut scanner = Scanner::new(sender, limit);
    let mut seen = Seen::default();
    for (i, chunk) in stream.chunks(piece.max(1)).enumerate() {
        let mut s = Summary::default();
        let r = scanner.scan(chunk, &mut s);
        if let Some(b) = s.last_boundary {
            assert!(b <= chunk.len());
            seen.last_boundary = Some(i * piece.max(1) + b);
        }
        seen.counts.0 += s.messages;
        seen.counts.1 += s.frames;
        seen.counts.2 += s.pings;
        seen.counts.3 += s.pongs;
        seen.close_seen |= s.close_seen;
        seen.close_code = seen.close_code.or(s.close_code);
        if let Err(e) = r {
            seen.error = Some(e);
            break;
        }
    }
    seen
}

#[test]
fn scanner_corpus_is_split_invariant_and_agrees_with_the_reference() {
    let mut refused = Vec::new();
    for (name, input) in corpus("scanner") {
        let Some(frame_reference::Input { limit, sender, cuts, stream }) = frame_reference::decode(&input) else {
            continue;
        };
        let whole = scan(sender, limit, stream, stream.len());
        for piece in [1, 2, 3, 7, 64].into_iter().chain(cuts.iter().map(|&c| usize::from(c))) {
            let pieces = scan(sender, limit, stream, piece);
            if whole.error.is_some() {
                assert_eq!((&whole.error, whole.counts), (&pieces.error, pieces.counts), "{name}, pieces of {piece}");
            } else {
                assert_eq!(whole, pieces, "{name}, pieces of {piece}");
            }
        }
        let reference = frame_reference::verdict(sender, limit, stream);
        assert_eq!((whole.counts.1, whole.error), (reference.frames, reference.error), "{name}: scanner vs reference");
        refused.extend(whole.error.map(ScanError::label));
    }
    // The seeds reach every framing rule (one seed per rule at least).
    refused.sort_unstable();
    refused.dedup();
    assert_eq!(refused.len(), 9, "rules the seeds reach: {refused:?}");
}

#[test]
fn scanner_rejects_a_64_bit_length_with_the_top_bit_set_however_it_is_split() {
    let mut stream = vec![0x82, 0xff];
    stream.extend_from_slice(&((1u64 << 63) | 5).to_be_bytes());
    stream.extend_from_slice(&[1, 2, 3, 4]);
    for piece in 1..=stream.len() {
        assert_eq!(
            scan(Role::Client, None, &stream, piece).error,
            Some(ScanError::LengthOverflow),
            "pieces of {piece}"
        );
    }
}

#[test]
fn trusted_proxies_corpus_keeps_the_cidr_invariants() {
    for (name, input) in corpus("trusted_proxies") {
        eprintln!("trusted_proxies/{name}");
        client_addr_checks::check_trusted_proxies(&input);
    }
}

#[test]
fn forwarded_for_corpus_keeps_the_walk_invariants() {
    for (name, input) in corpus("forwarded_for") {
        eprintln!("forwarded_for/{name}");
        assert!(client_addr_checks::decode_walk(&input).is_some(), "{name}: too short to be a walk");
        client_addr_checks::check_forwarded_for(&input);
    }
}

/// Issue 11: an IPv4-mapped trusted entry and an IPv4 peer (a panic before), through the
/// fuzz target's own checks.
#[test]
fn forwarded_for_with_an_ipv4_mapped_trusted_entry() {
    let mut input = vec![0];
    input.extend_from_slice(&[10, 0, 0, 1]);
    input.extend_from_slice(&[0; 12]);
    input.push(1);
    input.push(2); // an IPv4-mapped entry: ::ffff:10.0.0.1/128
    input.extend_from_slice(&[10, 0, 0, 1]);
    input.extend_from_slice(&[0; 12]);
    input.push(128);
    input.extend_from_slice(b"203.0.113.9");
    let walk = client_addr_checks::decode_walk(&input).expect("a walk");
    assert_eq!(walk.trusted.networks()[0].to_string(), "10.0.0.1/32");
    let info = walk.trusted.resolve(walk.peer, walk.lines.iter().copied());
    assert_eq!(info.client.to_string(), "203.0.113.9");
    client_addr_checks::check_forwarded_for(&input);
}

#[test]
fn manifests_corpus_loads_deterministically_without_panicking() {
    let defaults = Defaults::default();
    for (name, input) in corpus("manifests_text") {
        let Ok(text) = std::str::from_utf8(&input) else { continue };
        match (file::load(text, &defaults), file::load(text, &defaults)) {
            (Ok((a, _)), Ok((b, _))) => assert!(file::same_routes(&a, &b), "{name}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
            _ => panic!("{name}: loaded differently twice"),
        }
    }
}

#[test]
fn seed_manifests_give_routes() {
    // The fixture-derived seeds are real configurations: they must keep producing routes
    // (a seed that silently stops parsing would leave the fuzzer exploring error paths only).
    let defaults = Defaults::default();
    for (name, input) in corpus("manifests_text") {
        if ["broken", "empty", "terminating_only"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let text = String::from_utf8(input).unwrap();
        let (table, _) = file::load(&text, &defaults).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!table.rules().is_empty(), "{name}: no routes");
    }
}

#[test]
fn request_head_corpus_keeps_the_parser_invariants() {
    for (name, input) in corpus("request_head") {
        let outcome = std::panic::catch_unwind(|| wsingress::proxy::http1::check_invariants(&input));
        assert!(outcome.is_ok(), "request_head seed {name} broke an invariant");
    }
}

#[test]
fn proxy_protocol_corpus_keeps_the_parser_invariants() {
    let mut complete = 0;
    for (name, input) in corpus("proxy_protocol") {
        eprintln!("proxy_protocol/{name}");
        proxy_protocol_checks::check(&input);
        if let Ok(wsingress::proxy::proxy_protocol::Parsed::Complete(_)) =
            wsingress::proxy::proxy_protocol::parse(&input)
        {
            complete += 1;
        }
    }
    assert!(complete >= 6, "the seeds include complete v1 and v2 headers ({complete})");
}

/// Without libFuzzer: a deterministic mutation sweep over the PROXY protocol seeds (byte
/// flips, truncations, insertions, length-field rewrites), every input through the same
/// invariants as the fuzz target.
#[test]
fn proxy_protocol_mutation_sweep_keeps_the_invariants() {
    let seeds: Vec<Vec<u8>> = corpus("proxy_protocol").into_iter().map(|(_, input)| input).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut inputs = 0u32;
    for round in 0..20_000u32 {
        let mut input = seeds[round as usize % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let r = next();
            let at = if input.is_empty() { 0 } else { (r >> 8) as usize % input.len() };
            match r % 5 {
                0 if !input.is_empty() => input[at] ^= 1 << ((r >> 32) % 8),
                1 => input.truncate(at),
                2 => input.insert(at.min(input.len()), (r >> 40) as u8),
                // The v2 length field, or a v1 byte, set to an interesting value.
                3 if input.len() > 15 => {
                    input[14 + (r >> 16) as usize % 2] = [0, 1, 0x7f, 0xff][(r >> 24) as usize % 4]
                }
                _ if !input.is_empty() => input[at] = [b' ', b'\r', b'\n', b'0', b':', 0][(r >> 32) as usize % 6],
                _ => {}
            }
        }
        proxy_protocol_checks::check(&input);
        inputs += 1;
    }
    assert_eq!(inputs, 20_000);
}

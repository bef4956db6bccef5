//! Fuzz target: the RFC 6455 frame-header scanner (`ws::Scanner`) over arbitrary byte
//! streams from a client or a server, cut into arbitrary chunks. Invariants: it never
//! panics; scanning the stream in one piece and in pieces gives the same counts, close code,
//! error and final boundary; every `last_boundary` lies inside its chunk; the verdict (the
//! framing rule broken, and how many frames came before) is the one of a plain whole-stream
//! reading of RFC 6455 (`fuzz/shared/frame_reference.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsingress::ws::{Role, ScanError, Scanner, Summary};

#[path = "../shared/frame_reference.rs"]
mod frame_reference;

/// What a scan of a whole stream observed, in stream offsets.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    messages: u64,
    frames: u64,
    pings: u64,
    pongs: u64,
    close_seen: bool,
    close_code: Option<u16>,
    last_boundary: Option<usize>,
    error: Option<ScanError>,
    at_boundary: bool,
    in_message: bool,
}

impl Seen {
    fn add(&mut self, s: &Summary, chunk_start: usize, chunk_len: usize) {
        if let Some(b) = s.last_boundary {
            assert!(b <= chunk_len, "last_boundary {b} outside a chunk of {chunk_len} bytes");
            self.last_boundary = Some(chunk_start + b);
        }
        self.messages += s.messages;
        self.frames += s.frames;
        self.pings += s.pings;
        self.pongs += s.pongs;
        self.close_seen |= s.close_seen;
        if self.close_code.is_none() {
            self.close_code = s.close_code;
        }
    }
}

fn scan(sender: Role, limit: Option<u64>, stream: &[u8], cuts: &[u8]) -> Seen {
    let mut scanner = Scanner::new(sender, limit);
    let mut seen = Seen::default();
    let mut at = 0;
    let mut cuts = cuts.iter().cycle();
    while at < stream.len() {
        // An empty cut list means one piece; a zero cut is an empty chunk (must be harmless).
        let take = match cuts.next() {
            Some(&c) => usize::from(c).min(stream.len() - at),
            None => stream.len() - at,
        };
        let chunk = &stream[at..at + take];
        let mut summary = Summary::default();
        let result = scanner.scan(chunk, &mut summary);
        seen.add(&summary, at, chunk.len());
        at += take;
        if let Err(e) = result {
            seen.error = Some(e);
            return seen;
        }
    }
    seen.at_boundary = scanner.at_boundary();
    seen.in_message = scanner.in_message();
    seen
}

fuzz_target!(|input: &[u8]| {
    let Some(frame_reference::Input { limit, sender, cuts, stream }) = frame_reference::decode(input) else { return };

    let whole = scan(sender, limit, stream, &[]);
    let pieces = scan(sender, limit, stream, if cuts.iter().all(|&c| c == 0) { &[1] } else { cuts });
    let bytewise = scan(sender, limit, stream, &[1]);
    if whole.error.is_some() {
        // Errors are raised as soon as the offending header is complete, so the offsets
        // reached differ; everything counted before the error must not.
        assert_eq!(whole.error, pieces.error);
        assert_eq!(whole.error, bytewise.error);
        for other in [&pieces, &bytewise] {
            let counts = |s: &Seen| (s.messages, s.frames, s.pings, s.pongs, s.close_seen, s.close_code);
            assert_eq!(counts(&whole), counts(other));
        }
    } else {
        assert_eq!(whole, pieces, "split-invariance (cuts {cuts:?})");
        assert_eq!(whole, bytewise, "split-invariance (byte by byte)");
    }
    if whole.error.is_none() && whole.at_boundary && !stream.is_empty() {
        assert_eq!(whole.last_boundary, Some(stream.len()), "at a boundary, the last frame ended at the end");
    }
    let reference = frame_reference::verdict(sender, limit, stream);
    assert_eq!((whole.frames, whole.error), (reference.frames, reference.error), "scanner vs reference");
});

//! Tests of the frame scanner: length forms, splits at every byte, each framing rule (at every
//! split and byte by byte), a reference model fed random frames in random chunks, tungstenite
//! round trips, and an ignored benchmark.

use super::*;
use std::io::Cursor;
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader, coding::OpCode};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Append a header with the shortest length form.
fn push_header(out: &mut Vec<u8>, b0: u8, mask: Option<[u8; 4]>, len: u64) {
    out.push(b0);
    let m = if mask.is_some() { MASK } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Append a whole frame, masking the payload when `mask` is given.
fn push_frame(out: &mut Vec<u8>, b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    push_header(out, b0, mask, payload.len() as u64);
    let key = mask.unwrap_or([0; 4]);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

fn fin(opcode: u8) -> u8 {
    FIN | opcode
}

fn client(limit: Option<u64>) -> Scanner {
    Scanner::new(Role::Client, limit)
}

fn server(limit: Option<u64>) -> Scanner {
    Scanner::new(Role::Server, limit)
}

/// The sender whose frames carry `mask` legitimately (RFC 6455 §5.1).
fn sender_of(mask: Option<[u8; 4]>) -> Role {
    if mask.is_some() { Role::Client } else { Role::Server }
}

/// The mask a frame from `sender` carries (`key` for a client).
fn mask_of(sender: Role, key: [u8; 4]) -> Option<[u8; 4]> {
    (sender == Role::Client).then_some(key)
}

/// Scan `data` cut at `cuts` (ascending offsets); returns one summary per chunk, stopping
/// at the first error.
fn scan_cut(scanner: &mut Scanner, data: &[u8], cuts: &[usize]) -> Vec<(Summary, Result<(), ScanError>)> {
    let mut results = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let mut summary = Summary::default();
        let result = scanner.scan(&data[start..end], &mut summary);
        let failed = result.is_err();
        results.push((summary, result));
        if failed {
            break;
        }
        start = end;
    }
    results
}

/// Sum of per-chunk summaries; `last_boundary` becomes an absolute offset, the first
/// close code wins.
fn totals(data_len: usize, cuts: &[usize], chunks: &[(Summary, Result<(), ScanError>)]) -> Summary {
    let starts: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).collect();
    let mut total = Summary::default();
    for (i, (s, _)) in chunks.iter().enumerate() {
        total.messages += s.messages;
        total.frames += s.frames;
        total.pings += s.pings;
        total.pongs += s.pongs;
        total.close_seen |= s.close_seen;
        total.close_code = total.close_code.or(s.close_code);
        if let Some(b) = s.last_boundary {
            total.last_boundary = Some(starts[i] + b);
        }
    }
    assert!(total.last_boundary.is_none_or(|b| b <= data_len));
    total
}

fn scan_whole(scanner: &mut Scanner, data: &[u8]) -> (Summary, Result<(), ScanError>) {
    let mut summary = Summary::default();
    let result = scanner.scan(data, &mut summary);
    (summary, result)
}

#[test]
fn scanner_is_small() {
    let size = std::mem::size_of::<Scanner>();
    println!("size_of::<Scanner>() = {size}");
    assert!(size <= 48, "{size}");
}

#[test]
fn every_length_form_masked_and_unmasked() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
        for mask in [None, Some(KEY)] {
            let mut data = Vec::new();
            push_frame(&mut data, fin(OP_BINARY), mask, &vec![0xAB; len]);
            let header = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            } + if mask.is_some() { 4 } else { 0 };
            assert_eq!(data.len(), header + len);

            let mut scanner = Scanner::new(sender_of(mask), None);
            let (s, r) = scan_whole(&mut scanner, &data);
            assert_eq!(r, Ok(()));
            assert_eq!((s.frames, s.messages), (1, 1), "len {len}");
            assert_eq!(s.last_boundary, Some(data.len()), "len {len}");
            assert!(scanner.at_boundary());

            // Header alone: the payload is pending.
            let mut scanner = Scanner::new(sender_of(mask), None);
            let (s, r) = scan_whole(&mut scanner, &data[..header]);
            assert_eq!(r, Ok(()));
            assert_eq!(s.frames, 1);
            assert_eq!(scanner.at_boundary(), len == 0, "len {len}");
            assert_eq!(scanner.remaining, len as u64);
        }
    }
}

#[test]
fn huge_64_bit_length_is_followed_without_touching_the_payload() {
    // 2^40 + 3 bytes of payload: fed as 2^20 chunks of 1 MiB plus 3 bytes, each skipped
    // in O(1).
    let len: u64 = (1 << 40) + 3;
    let mut data = Vec::new();
    push_header(&mut data, fin(OP_BINARY), Some(KEY), len);
    assert_eq!(data.len(), 14);
    let mut scanner = client(None);
    let (s, r) = scan_whole(&mut scanner, &data);
    assert_eq!((s.frames, s.messages, r), (1, 1, Ok(())));
    assert!(!scanner.at_boundary());

    let mib = vec![0u8; 1 << 20];
    let mut s = Summary::default();
    for _ in 0..(1 << 20) {
        scanner.scan(&mib, &mut s).expect("payload");
    }
    assert_eq!(s, Summary::default());
    assert_eq!(scanner.remaining, 3);
    assert!(!scanner.at_boundary());

    // The last 3 bytes and a ping in one chunk.
    let mut tail = vec![1, 2, 3];
    push_frame(&mut tail, fin(OP_PING), Some(KEY), b"hi");
    let (s, r) = scan_whole(&mut scanner, &tail);
    assert_eq!(r, Ok(()));
    assert_eq!((s.frames, s.pings, s.messages), (1, 1, 0));
    assert_eq!(s.last_boundary, Some(tail.len()));
    assert!(scanner.at_boundary());

    // The largest length the relay can follow.
    let mut data = Vec::new();
    push_header(&mut data, fin(OP_TEXT), None, i64::MAX as u64);
    let mut scanner = server(None);
    assert_eq!(scan_whole(&mut scanner, &data).1, Ok(()));
    assert_eq!(scanner.remaining, i64::MAX as u64);
}

#[test]
fn length_with_top_bit_set_is_an_overflow_wherever_it_is_split() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_TEXT), Some(KEY), b"ok");
    let good = data.len();
    push_header(&mut data, fin(OP_BINARY), Some(KEY), 1 << 63);
    data.extend_from_slice(&[0; 32]);

    let (s, r) = scan_whole(&mut client(None), &data);
    assert_eq!(r, Err(ScanError::LengthOverflow));
    assert_eq!((s.frames, s.messages, s.last_boundary), (1, 1, Some(good)));
    // The error comes with the chunk that completes the bad header (mask key included).
    assert_refused_at_every_split(Role::Client, None, &data, good + 14, ScanError::LengthOverflow, 1);
}

#[test]
fn fragmented_message_with_control_frames_between_fragments() {
    let mut data = Vec::new();
    push_frame(&mut data, OP_TEXT, Some(KEY), b"Hel");
    let after_first = data.len();
    push_frame(&mut data, fin(OP_PING), Some(KEY), b"p");
    push_frame(&mut data, OP_CONTINUATION, Some(KEY), b"lo, ");
    push_frame(&mut data, fin(OP_PONG), Some(KEY), b"");
    push_frame(&mut data, fin(OP_CONTINUATION), Some(KEY), b"world");
    let end = data.len();
    push_frame(&mut data, fin(OP_BINARY), Some(KEY), &[7; 300]);

    let mut scanner = client(None);
    let (s, r) = scan_whole(&mut scanner, &data[..after_first]);
    assert_eq!((s.frames, s.messages, r), (1, 0, Ok(())));
    assert!(scanner.in_message() && scanner.at_boundary());

    let (s, r) = scan_whole(&mut scanner, &data[after_first..end]);
    assert_eq!(r, Ok(()));
    assert_eq!((s.frames, s.messages, s.pings, s.pongs), (4, 1, 1, 1));
    assert!(!scanner.in_message());

    let (s, _) = scan_whole(&mut scanner, &data[end..]);
    assert_eq!((s.frames, s.messages), (1, 1));
    assert!(scanner.at_boundary());
}

#[test]
fn many_frames_in_one_chunk_and_last_boundary() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_TEXT), None, b"one");
    let first = data.len();
    push_frame(&mut data, fin(OP_BINARY), None, &[0; 200]);
    push_frame(&mut data, fin(OP_PING), None, b"");
    let third = data.len();
    push_frame(&mut data, fin(OP_TEXT), None, &[b'x'; 70_000]);

    let mut scanner = server(None);
    // Ends in the middle of the fourth frame: the boundary is after the zero-length ping.
    let cut = third + 100;
    let (s, r) = scan_whole(&mut scanner, &data[..cut]);
    assert_eq!(r, Ok(()));
    assert_eq!((s.frames, s.messages, s.pings), (4, 3, 1));
    assert_eq!(s.last_boundary, Some(third));
    assert!(!scanner.at_boundary());

    // Only payload: no boundary.
    let (s, _) = scan_whole(&mut scanner, &data[cut..cut + 1000]);
    assert_eq!(s, Summary::default());
    // The rest: the frame ends at the end of the chunk.
    let (s, _) = scan_whole(&mut scanner, &data[cut + 1000..]);
    assert_eq!(s.last_boundary, Some(data.len() - cut - 1000));
    assert_eq!(s.frames, 0);
    assert!(scanner.at_boundary());

    // A chunk holding exactly one frame.
    let (s, _) = scan_whole(&mut server(None), &data[..first]);
    assert_eq!(s.last_boundary, Some(first));
}

#[test]
fn zero_length_frame_ends_with_its_header_even_when_split() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_PONG), Some(KEY), b"");
    assert_eq!(data.len(), 6);
    for cut in 1..6 {
        let mut scanner = client(None);
        let (s, _) = scan_whole(&mut scanner, &data[..cut]);
        assert_eq!((s.frames, s.last_boundary), (0, None));
        assert!(!scanner.at_boundary(), "cut {cut}");
        let (s, _) = scan_whole(&mut scanner, &data[cut..]);
        assert_eq!((s.frames, s.pongs), (1, 1));
        assert_eq!(s.last_boundary, Some(6 - cut));
        assert!(scanner.at_boundary());
    }
}

#[test]
fn at_boundary_transitions() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_BINARY), Some(KEY), &[1; 126]);
    assert_eq!(data.len(), 4 + 4 + 126);
    let mut scanner = client(None);
    assert!(scanner.at_boundary());
    let mut s = Summary::default();
    let mut states = Vec::new();
    for byte in &data {
        scanner.scan(std::slice::from_ref(byte), &mut s).expect("scan");
        states.push(scanner.at_boundary());
    }
    // Inside the header and the payload: false; after the last payload byte: true.
    assert!(states[..data.len() - 1].iter().all(|b| !b));
    assert!(states[data.len() - 1]);
    assert_eq!((s.frames, s.messages), (1, 1));
    // Empty chunks change nothing.
    scanner.scan(&[], &mut s).expect("scan");
    assert!(scanner.at_boundary());
    scanner.scan(&data[..1], &mut s).expect("scan");
    scanner.scan(&[], &mut s).expect("scan");
    assert!(!scanner.at_boundary());
}

/// A valid stream from `sender` with every feature; used by the split tests.
fn mixed_stream(sender: Role) -> Vec<u8> {
    let m = mask_of(sender, KEY);
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_TEXT), m, b"hello");
    push_frame(&mut data, fin(OP_BINARY), m, &[0; 125]);
    push_frame(&mut data, OP_BINARY, m, &[1; 126]);
    push_frame(&mut data, fin(OP_PING), m, b"are you there");
    // A zero mask key is still a mask.
    push_frame(&mut data, OP_CONTINUATION, mask_of(sender, [0; 4]), &[2; 0]);
    push_frame(&mut data, fin(OP_PONG), m, b"");
    push_frame(&mut data, fin(OP_CONTINUATION), m, &[3; 65536]);
    // Reserved bits are the endpoints' business: followed, not refused.
    push_frame(&mut data, fin(0x70 | OP_TEXT), m, b"rsv");
    push_frame(&mut data, 0x40 | OP_BINARY, m, b"deflated first fragment");
    push_frame(&mut data, fin(0x30 | OP_PING), m, b"rsv on ping");
    push_frame(&mut data, fin(OP_CONTINUATION), m, b"rest");
    push_frame(&mut data, fin(OP_BINARY), m, &[4; 65535]);
    push_frame(&mut data, fin(OP_PING), m, &[5; MAX_CONTROL_PAYLOAD]);
    push_frame(&mut data, fin(OP_CLOSE), m, b"\x03\xe9going away");
    // What follows a Close is the endpoints' business too.
    push_frame(&mut data, fin(OP_TEXT), m, b"");
    data
}

#[test]
fn same_totals_at_every_split_and_byte_by_byte() {
    for sender in [Role::Client, Role::Server] {
        let data = mixed_stream(sender);
        let (whole, r) = scan_whole(&mut Scanner::new(sender, None), &data);
        assert_eq!(r, Ok(()));
        assert_eq!(
            whole,
            Summary {
                messages: 7,
                frames: 15,
                pings: 3,
                pongs: 1,
                close_seen: true,
                close_code: Some(1001),
                last_boundary: Some(data.len()),
            }
        );

        for cut in 0..=data.len() {
            let mut scanner = Scanner::new(sender, None);
            let chunks = scan_cut(&mut scanner, &data, &[cut]);
            assert_eq!(totals(data.len(), &[cut], &chunks), whole, "cut {cut}");
            assert!(scanner.at_boundary());
        }

        let cuts: Vec<usize> = (1..data.len()).collect();
        let mut scanner = Scanner::new(sender, None);
        let chunks = scan_cut(&mut scanner, &data, &cuts);
        assert!(chunks.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(totals(data.len(), &cuts, &chunks), whole);
        assert!(scanner.at_boundary());

        // The same frames from the other end break §5.1 at the first header.
        let other = if sender == Role::Client { Role::Server } else { Role::Client };
        let (s, r) = scan_whole(&mut Scanner::new(other, None), &data);
        let want = if other == Role::Server { ScanError::MaskedServerFrame } else { ScanError::UnmaskedClientFrame };
        assert_eq!((s.frames, r), (0, Err(want)));
    }
}

#[test]
fn close_code_is_unmasked_even_when_split() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_CLOSE), Some(KEY), b"\x0f\xa0bye"); // 4000
    assert_eq!(data[6] ^ KEY[0], 0x0f);
    for cut in 0..=data.len() {
        let chunks = scan_cut(&mut client(None), &data, &[cut]);
        let t = totals(data.len(), &[cut], &chunks);
        assert!(t.close_seen);
        assert_eq!(t.close_code, Some(4000), "cut {cut}");
        // The code is reported in the chunk holding its second byte.
        let code_chunk = usize::from(cut <= 7);
        assert_eq!(chunks[code_chunk].0.close_code, Some(4000), "cut {cut}");
    }
    // Byte by byte.
    let cuts: Vec<usize> = (1..data.len()).collect();
    let chunks = scan_cut(&mut client(None), &data, &cuts);
    assert_eq!(chunks[7].0.close_code, Some(4000));
    assert!(chunks[5].0.close_seen);

    // Unmasked, from a server.
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_CLOSE), None, &1011u16.to_be_bytes());
    assert_eq!(scan_whole(&mut server(None), &data).0.close_code, Some(1011));
}

#[test]
fn close_without_code() {
    for payload in [&b""[..], &b"\x03"[..]] {
        for mask in [None, Some(KEY)] {
            let mut data = Vec::new();
            push_frame(&mut data, fin(OP_CLOSE), mask, payload);
            let mut scanner = Scanner::new(sender_of(mask), None);
            let (s, r) = scan_whole(&mut scanner, &data);
            assert_eq!(r, Ok(()));
            assert!(s.close_seen);
            assert_eq!(s.close_code, None);
            assert_eq!(s.last_boundary, Some(data.len()));
            assert!(scanner.at_boundary());
        }
    }
}

#[test]
fn first_close_code_wins_within_one_summary() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_CLOSE), Some(KEY), &1000u16.to_be_bytes());
    push_frame(&mut data, fin(OP_CLOSE), Some(KEY), &1001u16.to_be_bytes());
    let (s, _) = scan_whole(&mut client(None), &data);
    assert_eq!((s.frames, s.close_code), (2, Some(1000)));
}

#[test]
fn message_too_big_on_one_frame_before_its_payload() {
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_TEXT), Some(KEY), &[b'a'; 100]);
    let ok_end = data.len();
    push_header(&mut data, fin(OP_BINARY), Some(KEY), 101);

    let mut scanner = client(Some(100));
    assert_eq!(scanner.max_message(), Some(100));
    let (s, r) = scan_whole(&mut scanner, &data);
    assert_eq!(r, Err(ScanError::MessageTooBig { size: 101, limit: 100 }));
    assert_eq!((s.frames, s.messages, s.last_boundary), (1, 1, Some(ok_end)));

    // A 64-bit length against a limit.
    let mut data = Vec::new();
    push_header(&mut data, fin(OP_BINARY), None, 1 << 40);
    let (_, r) = scan_whole(&mut server(Some(1 << 20)), &data);
    assert_eq!(r, Err(ScanError::MessageTooBig { size: 1 << 40, limit: 1 << 20 }));
    assert_eq!(server(None).max_message(), None);
}

#[test]
fn message_too_big_across_fragments_ignoring_control_frames() {
    let mut data = Vec::new();
    push_frame(&mut data, OP_BINARY, Some(KEY), &[0; 60]);
    push_frame(&mut data, fin(OP_PING), Some(KEY), &[0; 100]);
    push_frame(&mut data, fin(OP_CONTINUATION), Some(KEY), &[0; 40]); // 100: fits
    push_frame(&mut data, OP_TEXT, Some(KEY), &[0; 60]); // a new message
    push_frame(&mut data, fin(OP_PONG), Some(KEY), &[0; 100]);
    push_frame(&mut data, fin(OP_CLOSE), Some(KEY), &[0; 100]);
    push_frame(&mut data, OP_CONTINUATION, Some(KEY), &[0; 40]); // 100: fits
    let ok_end = data.len();
    push_header(&mut data, fin(OP_CONTINUATION), Some(KEY), 1); // 101: too big
    let bad_end = data.len();
    data.extend_from_slice(&[0; 1]);

    let (s, r) = scan_whole(&mut client(Some(100)), &data);
    let too_big = ScanError::MessageTooBig { size: 101, limit: 100 };
    assert_eq!(r, Err(too_big));
    assert_eq!((s.frames, s.messages, s.pings, s.pongs), (7, 1, 1, 1));
    assert_eq!(s.last_boundary, Some(ok_end));
    assert_refused_at_every_split(Role::Client, Some(100), &data, bad_end, too_big, 7);

    // Without a limit, everything is followed.
    let (s, r) = scan_whole(&mut client(None), &data);
    assert_eq!((s.frames, s.messages, r), (8, 2, Ok(())));
}

// ---------------------------------------------------------------------------------------
// Framing rules (RFC 6455 §5.1, §5.2, §5.4, §5.5), each refused when its header completes.

/// Scan `data` from `sender` cut once at every offset, and byte by byte: the error is `want`,
/// raised by the chunk holding byte `decided_at - 1` (the header byte that decides the rule),
/// never earlier or later, with exactly `frames_before` frames counted before it.
fn assert_refused_at_every_split(
    sender: Role,
    limit: Option<u64>,
    data: &[u8],
    decided_at: usize,
    want: ScanError,
    frames_before: u64,
) {
    let (s, r) = scan_whole(&mut Scanner::new(sender, limit), data);
    assert_eq!((r, s.frames), (Err(want), frames_before), "whole");
    for cut in 0..=data.len() {
        let chunks = scan_cut(&mut Scanner::new(sender, limit), data, &[cut]);
        let err_chunk = usize::from(cut < decided_at);
        assert_eq!(chunks.len(), err_chunk + 1, "cut {cut}: {want:?}");
        assert_eq!(chunks[err_chunk].1, Err(want), "cut {cut}");
        assert_eq!(totals(data.len(), &[cut], &chunks).frames, frames_before, "cut {cut}");
    }
    let cuts: Vec<usize> = (1..data.len()).collect();
    let chunks = scan_cut(&mut Scanner::new(sender, limit), data, &cuts);
    assert_eq!(chunks.len(), decided_at, "byte by byte: {want:?}");
    assert_eq!(chunks[decided_at - 1].1, Err(want), "byte by byte");
    assert_eq!(totals(data.len(), &cuts[..decided_at - 1], &chunks).frames, frames_before);
}

/// A valid frame, then `bad` (the offending header and its payload), then a valid frame the
/// scanner must never reach; `sender`'s masking. Returns the stream, where `bad` starts and
/// where its header ends.
fn after_a_good_frame(sender: Role, bad_first: u8, bad_payload_len: usize) -> (Vec<u8>, usize, usize) {
    let m = mask_of(sender, KEY);
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_TEXT), m, b"good");
    let bad_start = data.len();
    push_header(&mut data, bad_first, m, bad_payload_len as u64);
    let header_end = data.len();
    data.extend(std::iter::repeat_n(0x61, bad_payload_len));
    push_frame(&mut data, fin(OP_TEXT), m, b"never reached");
    (data, bad_start, header_end)
}

#[test]
fn client_frames_must_be_masked_and_server_frames_must_not() {
    // §5.1, each way, decided by the second byte; a mask key of zeros is still a mask.
    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_TEXT), Some([0; 4]), b"zero key");
    push_frame(&mut data, fin(OP_PING), Some(KEY), b"");
    let good_end = data.len();
    push_frame(&mut data, fin(OP_TEXT), None, b"unmasked");
    assert_refused_at_every_split(Role::Client, None, &data, good_end + 2, ScanError::UnmaskedClientFrame, 2);

    let mut data = Vec::new();
    push_frame(&mut data, fin(OP_BINARY), None, &[1; 200]);
    let good_end = data.len();
    push_frame(&mut data, fin(OP_CLOSE), Some([0; 4]), b"\x03\xe8");
    assert_refused_at_every_split(Role::Server, None, &data, good_end + 2, ScanError::MaskedServerFrame, 1);

    // The first frame of the stream, with a 64-bit length: refused before the length.
    let mut data = Vec::new();
    push_header(&mut data, fin(OP_BINARY), None, 70_000);
    assert_refused_at_every_split(Role::Client, None, &data, 2, ScanError::UnmaskedClientFrame, 0);
    assert_eq!(server(None).sender(), Role::Server);
    assert_eq!(client(None).sender(), Role::Client);
}

#[test]
fn reserved_opcodes_are_refused_from_the_first_byte() {
    // §5.2: 0x3–0x7 are reserved data opcodes, 0xB–0xF reserved control opcodes.
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        for sender in [Role::Client, Role::Server] {
            for (first, len) in [(fin(opcode), 8), (opcode, 0), (fin(opcode), 300)] {
                let (data, bad_start, _) = after_a_good_frame(sender, first, len);
                let want = ScanError::ReservedOpcode { opcode };
                assert_refused_at_every_split(sender, None, &data, bad_start + 1, want, 1);
            }
        }
    }
    // Also in the middle of a fragmented message.
    let mut data = Vec::new();
    push_frame(&mut data, OP_TEXT, None, b"frag");
    let decided_at = data.len() + 1;
    push_frame(&mut data, fin(0x3), None, b"x");
    let want = ScanError::ReservedOpcode { opcode: 3 };
    assert_refused_at_every_split(Role::Server, None, &data, decided_at, want, 1);
}

#[test]
fn control_frames_longer_than_125_bytes_are_refused_from_the_second_byte() {
    // §5.5: 125 passes; 126 (16-bit length) and 64-bit lengths do not, for each control
    // opcode: a 1 GiB "ping" is refused before its length is even read.
    for opcode in [OP_CLOSE, OP_PING, OP_PONG] {
        for sender in [Role::Client, Role::Server] {
            let m = mask_of(sender, KEY);
            let mut ok = Vec::new();
            push_frame(&mut ok, fin(opcode), m, &[0x03; MAX_CONTROL_PAYLOAD]);
            let (s, r) = scan_whole(&mut Scanner::new(sender, None), &ok);
            assert_eq!((s.frames, r), (1, Ok(())));

            for len in [126usize, 127, 65_535, 65_536] {
                let (data, bad_start, _) = after_a_good_frame(sender, fin(opcode), len);
                let want = ScanError::ControlTooLong { opcode };
                assert_refused_at_every_split(sender, None, &data, bad_start + 2, want, 1);
            }
            let mut data = Vec::new();
            push_header(&mut data, fin(opcode), m, 1 << 30);
            assert_refused_at_every_split(sender, None, &data, 2, ScanError::ControlTooLong { opcode }, 0);
            // A non-minimal 16-bit length (§5.2: "the minimal number of bytes MUST be used")
            // of a short control frame is refused the same way.
            let mut data = vec![fin(opcode), m.map_or(0, |_| MASK) | 126, 0, 5];
            data.extend(m.into_iter().flatten());
            data.extend_from_slice(&[0; 5]);
            assert_refused_at_every_split(sender, None, &data, 2, ScanError::ControlTooLong { opcode }, 0);
        }
    }
}

#[test]
fn fragmented_control_frames_are_refused_from_the_first_byte() {
    // §5.5: "MUST NOT be fragmented": FIN clear on a control frame, empty or not.
    for opcode in [OP_CLOSE, OP_PING, OP_PONG] {
        for sender in [Role::Client, Role::Server] {
            for len in [0, 1, 125] {
                let (data, bad_start, _) = after_a_good_frame(sender, opcode, len);
                let want = ScanError::FragmentedControl { opcode };
                assert_refused_at_every_split(sender, None, &data, bad_start + 1, want, 1);
            }
        }
    }
    // A control frame between fragments is fine only when it is final itself.
    let mut data = Vec::new();
    push_frame(&mut data, OP_BINARY, Some(KEY), b"a");
    push_frame(&mut data, fin(OP_PING), Some(KEY), b"p");
    let decided_at = data.len() + 1;
    push_frame(&mut data, OP_PONG, Some(KEY), b"q");
    push_frame(&mut data, fin(OP_CONTINUATION), Some(KEY), b"b");
    let want = ScanError::FragmentedControl { opcode: OP_PONG };
    assert_refused_at_every_split(Role::Client, None, &data, decided_at, want, 2);
}

#[test]
fn continuation_without_a_message_is_refused_from_the_first_byte() {
    // §5.4: continuations follow a non-final text or binary frame; at the start of the stream,
    // after a final frame, and after a message's final continuation there is none.
    for sender in [Role::Client, Role::Server] {
        let m = mask_of(sender, KEY);
        for first in [fin(OP_CONTINUATION), OP_CONTINUATION] {
            let mut data = Vec::new();
            push_frame(&mut data, first, m, b"orphan");
            assert_refused_at_every_split(sender, None, &data, 1, ScanError::OrphanContinuation, 0);

            let (data, bad_start, _) = after_a_good_frame(sender, first, 3);
            assert_refused_at_every_split(sender, None, &data, bad_start + 1, ScanError::OrphanContinuation, 1);
        }
        let mut data = Vec::new();
        push_frame(&mut data, OP_TEXT, m, b"one");
        push_frame(&mut data, fin(OP_CONTINUATION), m, b"two");
        let decided_at = data.len() + 1;
        push_frame(&mut data, fin(OP_CONTINUATION), m, b"three");
        assert_refused_at_every_split(sender, None, &data, decided_at, ScanError::OrphanContinuation, 2);
    }
}

#[test]
fn new_data_frame_inside_a_fragmented_message_is_refused_from_the_first_byte() {
    // §5.4: "The fragments of one message MUST NOT be interleaved between the fragments of
    // another message": a text or binary frame, final or not, while a message is open.
    for sender in [Role::Client, Role::Server] {
        let m = mask_of(sender, KEY);
        for opcode in [OP_TEXT, OP_BINARY] {
            for first in [opcode, fin(opcode)] {
                let mut data = Vec::new();
                push_frame(&mut data, OP_BINARY, m, b"open");
                push_frame(&mut data, OP_CONTINUATION, m, b"more");
                push_frame(&mut data, fin(OP_PING), m, b"");
                let decided_at = data.len() + 1;
                push_frame(&mut data, first, m, b"interleaved");
                let want = ScanError::InterleavedMessage { opcode };
                assert_refused_at_every_split(sender, None, &data, decided_at, want, 3);
            }
        }
    }
    // The same frames after the message ended are fine.
    let mut data = Vec::new();
    push_frame(&mut data, OP_TEXT, None, b"open");
    push_frame(&mut data, fin(OP_CONTINUATION), None, b"closed");
    push_frame(&mut data, OP_BINARY, None, b"next");
    let mut scanner = server(None);
    let (s, r) = scan_whole(&mut scanner, &data);
    assert_eq!((s.frames, s.messages, r), (3, 1, Ok(())));
    assert!(scanner.in_message());
}

#[test]
fn the_limit_applies_to_control_frames_too() {
    // `max-message-bytes` applies to every opcode: a control frame is a message of its own,
    // judged with the whole header (like a data frame).
    for opcode in [OP_CLOSE, OP_PING, OP_PONG] {
        let mut data = Vec::new();
        push_frame(&mut data, fin(opcode), Some(KEY), &[0x03; 10]);
        let (s, r) = scan_whole(&mut client(Some(10)), &data);
        assert_eq!((s.frames, r), (1, Ok(())));
        let (data, _, header_end) = after_a_good_frame(Role::Client, fin(opcode), 11);
        let want = ScanError::MessageTooBig { size: 11, limit: 10 };
        assert_refused_at_every_split(Role::Client, Some(10), &data, header_end, want, 1);
        // With a limit of 0, an empty control frame passes and a 1-byte one does not.
        let mut data = Vec::new();
        push_frame(&mut data, fin(opcode), None, b"");
        let decided_at = data.len() + 2;
        push_frame(&mut data, fin(opcode), None, b"x");
        let want = ScanError::MessageTooBig { size: 1, limit: 0 };
        assert_refused_at_every_split(Role::Server, Some(0), &data, decided_at, want, 1);
    }
}

#[test]
fn the_first_broken_rule_is_reported() {
    // Documented order: opcode rules (first byte), masking, control length (second byte),
    // then the 64-bit length and the size limit (whole header).
    let verdict = |scanner: &mut Scanner, first: u8, mask: Option<[u8; 4]>, len: u64| {
        let mut data = Vec::new();
        push_header(&mut data, first, mask, len);
        scan_whole(scanner, &data).1
    };
    let reserved = Err(ScanError::ReservedOpcode { opcode: 3 });
    assert_eq!(verdict(&mut client(Some(1)), 0x3, None, 1 << 63), reserved);
    let fragmented = Err(ScanError::FragmentedControl { opcode: OP_PING });
    assert_eq!(verdict(&mut client(Some(1)), OP_PING, None, 200), fragmented);
    assert_eq!(verdict(&mut client(Some(1)), fin(OP_CONTINUATION), None, 200), Err(ScanError::OrphanContinuation));
    assert_eq!(verdict(&mut client(Some(1)), fin(OP_PING), None, 200), Err(ScanError::UnmaskedClientFrame));
    let too_long = Err(ScanError::ControlTooLong { opcode: OP_PING });
    assert_eq!(verdict(&mut server(Some(1)), fin(OP_PING), None, 1 << 63), too_long);
    assert_eq!(verdict(&mut server(Some(1)), fin(OP_BINARY), None, 1 << 63), Err(ScanError::LengthOverflow));
    let too_big = Err(ScanError::MessageTooBig { size: 2, limit: 1 });
    assert_eq!(verdict(&mut server(Some(1)), fin(OP_BINARY), None, 2), too_big);
}

#[test]
fn errors_map_to_close_codes_and_labels() {
    let all = [
        ScanError::LengthOverflow,
        ScanError::UnmaskedClientFrame,
        ScanError::MaskedServerFrame,
        ScanError::ReservedOpcode { opcode: 3 },
        ScanError::FragmentedControl { opcode: OP_PING },
        ScanError::ControlTooLong { opcode: OP_CLOSE },
        ScanError::OrphanContinuation,
        ScanError::InterleavedMessage { opcode: OP_TEXT },
        ScanError::MessageTooBig { size: 2, limit: 1 },
    ];
    let mut labels = std::collections::HashSet::new();
    for e in all {
        let want = if matches!(e, ScanError::MessageTooBig { .. }) { 1009 } else { 1002 };
        assert_eq!(e.close_code(), want, "{e:?}");
        assert!(crate::ws::close::is_valid_wire_code(e.close_code()));
        let label = e.label();
        assert!(!label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{label}");
        assert!(labels.insert(label), "label {label} used twice");
        assert!(!e.to_string().is_empty());
    }
    let e = ScanError::ControlTooLong { opcode: 9 };
    assert_eq!(e.to_string(), "control frame (opcode 0x9) with more than 125 bytes of payload");
}

#[test]
fn encode_control_round_trips_through_the_scanner() {
    let mut buf = [0u8; 131];
    let mut close = [0u8; 125];
    let n = crate::ws::close::close_payload(1001, "bye", &mut close);
    for mask in [None, Some(KEY)] {
        let written = encode_control(OP_CLOSE, &close[..n], mask, &mut buf);
        assert_eq!(written, n + if mask.is_some() { 6 } else { 2 });
        let (s, r) = scan_whole(&mut Scanner::new(sender_of(mask), None), &buf[..written]);
        assert_eq!(r, Ok(()));
        assert!(s.close_seen);
        assert_eq!((s.frames, s.close_code), (1, Some(1001)));
        assert_eq!(s.last_boundary, Some(written));

        for (op, len) in [(OP_PING, 0), (OP_PING, 125), (OP_PONG, 7), (OP_PONG, 300)] {
            let payload = vec![0x5a; len];
            let written = encode_control(op, &payload, mask, &mut buf);
            let clamped = len.min(MAX_CONTROL_PAYLOAD);
            assert_eq!(written, clamped + if mask.is_some() { 6 } else { 2 });
            let mut scanner = Scanner::new(sender_of(mask), None);
            let (s, _) = scan_whole(&mut scanner, &buf[..written]);
            assert_eq!((s.frames, s.pings, s.pongs), (1, u64::from(op == OP_PING), u64::from(op == OP_PONG)));
            assert!(scanner.at_boundary());
        }
    }
    // Byte layout of a masked ping.
    let written = encode_control(OP_PING, b"ab", Some([1, 2, 3, 4]), &mut buf);
    assert_eq!(&buf[..written], &[0x89, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2]);
}

#[test]
fn encode_control_round_trips_through_tungstenite() {
    let mut buf = [0u8; 131];
    for (op, payload) in [(OP_PING, &b"ping!"[..]), (OP_PONG, &b""[..]), (OP_CLOSE, &b"\x03\xe8ok"[..])] {
        for mask in [None, Some(KEY)] {
            let written = encode_control(op, payload, mask, &mut buf);
            let mut cursor = Cursor::new(&buf[..written]);
            let (header, len) = FrameHeader::parse(&mut cursor).expect("valid header").expect("complete header");
            assert!(header.is_final && !header.rsv1 && !header.rsv2 && !header.rsv3);
            assert_eq!(u8::from(header.opcode), op);
            assert_eq!(header.mask, mask);
            assert_eq!(len, payload.len() as u64);
            let at = cursor.position() as usize;
            let key = mask.unwrap_or([0; 4]);
            let unmasked: Vec<u8> = buf[at..written].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(unmasked, payload);
        }
    }
}

#[test]
fn frames_written_by_tungstenite_are_followed() {
    for sender in [Role::Client, Role::Server] {
        let mut data = Vec::new();
        let mut expected = 0;
        for (i, len) in [0usize, 5, 125, 126, 4000, 65535, 65536, 70_000].into_iter().enumerate() {
            let opcode = if i % 2 == 0 { OP_TEXT } else { OP_BINARY };
            let header = FrameHeader {
                is_final: true,
                opcode: OpCode::from(opcode),
                mask: mask_of(sender, [i as u8, 2, 3, 4]),
                ..FrameHeader::default()
            };
            Frame::from_payload(header, vec![b'z'; len].into()).format(&mut data).expect("format");
            expected += 1;
        }
        let mut ping = Frame::ping(vec![1, 2]);
        ping.header_mut().mask = mask_of(sender, KEY);
        ping.format(&mut data).expect("format");
        let close = FrameHeader { mask: mask_of(sender, KEY), ..FrameHeader::default() };
        Frame::from_payload(close, 1008u16.to_be_bytes().to_vec().into()).format(&mut data).expect("format");

        let cuts: Vec<usize> = (1..data.len()).step_by(7).collect();
        let chunks = scan_cut(&mut Scanner::new(sender, None), &data, &cuts);
        let t = totals(data.len(), &cuts, &chunks);
        assert!(chunks.iter().all(|(_, r)| r.is_ok()), "{sender:?}");
        assert_eq!((t.messages, t.frames, t.pings), (expected, expected + 2, 1));
        assert_eq!(t.close_code, Some(1008));
        assert_eq!(t.last_boundary, Some(data.len()));
    }
}

// ---------------------------------------------------------------------------------------
// Reference model and randomized property test.

/// Deterministic SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What happens at an absolute stream offset (just past the byte that causes it).
#[derive(Debug, Clone, Copy)]
enum Event {
    Header { opcode: u8, fin: bool },
    Code(u16),
    End,
    Refused(ScanError),
}

/// Which header bytes decide a refusal: the first, the first two, or all of them.
#[derive(Debug, Clone, Copy)]
enum DecidedBy {
    FirstByte,
    SecondByte,
    WholeHeader,
}

/// The verdict RFC 6455 gives on a frame header, in the documented order (opcode rules, then
/// masking and the control-frame length, then the 64-bit length and the limit), written from
/// the RFC's wording rather than from the scanner's code. `message_len` is `Some` while a
/// fragmented message is open.
fn model_verdict(
    sender: Role,
    masked: bool,
    opcode: u8,
    is_fin: bool,
    len: u64,
    message_len: Option<u64>,
    limit: Option<u64>,
) -> Result<u64, (ScanError, DecidedBy)> {
    let is_control = opcode >= 0x8;
    let known = [OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG].contains(&opcode);
    let first = |e| Err((e, DecidedBy::FirstByte));
    if opcode == OP_CONTINUATION && message_len.is_none() {
        return first(ScanError::OrphanContinuation);
    }
    if (opcode == OP_TEXT || opcode == OP_BINARY) && message_len.is_some() {
        return first(ScanError::InterleavedMessage { opcode });
    }
    if known && is_control && !is_fin {
        return first(ScanError::FragmentedControl { opcode });
    }
    if !known {
        return first(ScanError::ReservedOpcode { opcode });
    }
    let second = |e| Err((e, DecidedBy::SecondByte));
    if sender == Role::Client && !masked {
        return second(ScanError::UnmaskedClientFrame);
    }
    if sender == Role::Server && masked {
        return second(ScanError::MaskedServerFrame);
    }
    if is_control && len > 125 {
        return second(ScanError::ControlTooLong { opcode });
    }
    if len >= 1 << 63 {
        return Err((ScanError::LengthOverflow, DecidedBy::WholeHeader));
    }
    let size = if opcode == OP_CONTINUATION { message_len.unwrap_or(0) + len } else { len };
    match limit {
        Some(limit) if size > limit => Err((ScanError::MessageTooBig { size, limit }, DecidedBy::WholeHeader)),
        _ => Ok(size),
    }
}

/// Encode up to `count` random frames from `sender`, mostly valid and now and then breaking
/// one rule; return the bytes and the events the model predicts, up to the first refusal.
fn random_stream(rng: &mut Rng, count: usize, limit: Option<u64>, sender: Role) -> (Vec<u8>, Vec<(usize, Event)>) {
    let mut data = Vec::new();
    let mut events = Vec::new();
    // Payload declared by the open fragmented message, if any.
    let mut message_len: Option<u64> = None;
    for _ in 0..count {
        let opcode = if rng.chance(5) {
            rng.pick(&[0x3, 0x7, 0xB, 0xF, OP_CONTINUATION, OP_TEXT, OP_BINARY])
        } else if message_len.is_some() {
            rng.pick(&[OP_CONTINUATION, OP_CONTINUATION, OP_CONTINUATION, OP_PING, OP_PONG, OP_CLOSE])
        } else {
            rng.pick(&[OP_TEXT, OP_TEXT, OP_BINARY, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
        };
        let is_control = opcode >= 0x8;
        let is_fin = if is_control { rng.chance(97) } else { rng.chance(70) };
        let rsv = if rng.chance(10) { (rng.below(8) as u8) << 4 } else { 0 };
        let masked = (sender == Role::Client) != rng.chance(2);
        let mask = masked.then(|| (rng.next() as u32).to_be_bytes());
        let b0 = (if is_fin { FIN } else { 0 }) | rsv | opcode;
        let start = data.len();
        if rng.chance(1) {
            // A 64-bit length with its top bit set: refused, by this rule or an earlier one.
            let len = (1u64 << 63) | rng.below(1 << 20);
            push_header(&mut data, b0, mask, len);
            let verdict = model_verdict(sender, masked, opcode, is_fin, len, message_len, limit);
            let Err((e, by)) = verdict else { panic!("a length of 2^63 or more passed the model") };
            let at = match by {
                DecidedBy::FirstByte => start + 1,
                DecidedBy::SecondByte => start + 2,
                DecidedBy::WholeHeader => data.len(),
            };
            events.push((at, Event::Refused(e)));
            return (data, events);
        }
        let len = if is_control && !rng.chance(3) {
            let any = rng.below(126);
            rng.pick(&[0, 1, 2, 125, any])
        } else {
            match rng.below(20) {
                0..=11 => rng.below(126),
                12..=15 => 126 + rng.below(900),
                16..=17 => rng.pick(&[0, 1, 2, 125, 126, 127, 65535, 65536]),
                _ => 1000 + rng.below(69_000),
            }
        } as usize;
        // Only a Close frame's first two bytes are read; the rest may be one fill byte.
        let mut payload = vec![rng.next() as u8; len];
        for b in payload.iter_mut().take(2) {
            *b = rng.next() as u8;
        }

        push_frame(&mut data, b0, mask, &payload);
        let header_end = data.len() - len;
        debug_assert!(header_end > start);

        let size = match model_verdict(sender, masked, opcode, is_fin, len as u64, message_len, limit) {
            Ok(size) => size,
            Err((e, by)) => {
                let at = match by {
                    DecidedBy::FirstByte => start + 1,
                    DecidedBy::SecondByte => start + 2,
                    DecidedBy::WholeHeader => header_end,
                };
                events.push((at, Event::Refused(e)));
                return (data, events);
            }
        };
        if !is_control {
            message_len = (!is_fin).then_some(size);
        }
        events.push((header_end, Event::Header { opcode, fin: is_fin }));
        if opcode == OP_CLOSE && len >= 2 {
            events.push((header_end + 2, Event::Code(u16::from_be_bytes([payload[0], payload[1]]))));
        }
        events.push((data.len(), Event::End));
    }
    (data, events)
}

/// The summary (and result) the model predicts for the chunk `start..end`.
fn expect_chunk(events: &[(usize, Event)], start: usize, end: usize) -> (Summary, Result<(), ScanError>) {
    let mut s = Summary::default();
    // Events are in offset order.
    let first = events.partition_point(|(at, _)| *at <= start);
    let last = events.partition_point(|(at, _)| *at <= end);
    for &(at, event) in &events[first..last] {
        match event {
            Event::Header { opcode, fin } => {
                s.frames += 1;
                match opcode {
                    OP_CONTINUATION | OP_TEXT | OP_BINARY if fin => s.messages += 1,
                    OP_CLOSE => s.close_seen = true,
                    OP_PING => s.pings += 1,
                    OP_PONG => s.pongs += 1,
                    _ => {}
                }
            }
            Event::Code(code) => s.close_code = s.close_code.or(Some(code)),
            Event::End => s.last_boundary = Some(at - start),
            Event::Refused(e) => return (s, Err(e)),
        }
    }
    (s, Ok(()))
}

fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0usize;
    let style = rng.below(4);
    loop {
        // Tiny steps alternate with occasional big jumps so long payloads stay cheap.
        let style = if style < 2 && rng.chance(10) { 2 } else { style };
        let step = match style {
            0 => rng.below(4) as usize,      // tiny, sometimes empty chunks
            1 => rng.below(20) as usize,     // splits inside headers
            2 => rng.below(70_000) as usize, // socket-sized reads
            _ => rng.pick(&[0, 1, 2, 3, 13, 14, 4096, 65536]),
        };
        at += step;
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

#[test]
fn random_streams_in_random_chunks_match_the_model() {
    let mut rng = Rng(0x0005_eed0_6455);
    let mut refusals = std::collections::HashMap::<&str, u32>::new();
    for round in 0..1000 {
        let limit = match rng.below(4) {
            0 => Some(rng.pick(&[0, 100, 1000, 70_000])),
            _ => None,
        };
        let sender = rng.pick(&[Role::Client, Role::Server]);
        let count = 1 + rng.below(30) as usize;
        let (data, events) = random_stream(&mut rng, count, limit, sender);
        for _ in 0..4 {
            let cuts = random_cuts(&mut rng, data.len());
            let mut scanner = Scanner::new(sender, limit);
            let chunks = scan_cut(&mut scanner, &data, &cuts);
            let starts = std::iter::once(0).chain(cuts.iter().copied());
            let ends = cuts.iter().copied().chain(std::iter::once(data.len()));
            for (i, (start, end)) in starts.zip(ends).enumerate().take(chunks.len()) {
                let expected = expect_chunk(&events, start, end);
                assert_eq!(chunks[i], expected, "round {round} chunk {i} ({start}..{end}), {sender:?}");
                if let Err(e) = expected.1 {
                    *refusals.entry(e.label()).or_default() += 1;
                }
            }
            if chunks.iter().all(|(_, r)| r.is_ok()) {
                assert!(scanner.at_boundary(), "round {round}");
            }
        }
    }
    // Every rule was exercised, several times.
    println!("refusals checked: {refusals:?}");
    assert_eq!(refusals.len(), 9, "{refusals:?}");
    assert!(refusals.values().all(|&n| n >= 8), "{refusals:?}");
}

// ---------------------------------------------------------------------------------------
// Micro-benchmark: `cargo test --release --lib ws:: -- --ignored --nocapture`.

fn bench(frame_len: usize) -> (f64, f64) {
    // About 16 MiB of masked binary frames, read in 64 KiB chunks.
    let frames = ((16 << 20) / frame_len).max(1);
    let mut data = Vec::new();
    for _ in 0..frames {
        push_frame(&mut data, fin(OP_BINARY), Some(KEY), &vec![0x42; frame_len]);
    }
    let mut scanner = client(Some(1 << 30));
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    let mut rounds = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(1) || rounds < 3 {
        let mut s = Summary::default();
        for chunk in data.chunks(64 << 10) {
            s.reset();
            scanner.scan(std::hint::black_box(chunk), &mut s).expect("bench stream is valid");
            std::hint::black_box(&s);
        }
        bytes += data.len() as u64;
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    (bytes as f64 / secs / 1e9, secs * 1e9 / (rounds * frames as u64) as f64)
}

#[test]
#[ignore = "micro-benchmark; run in release with --ignored --nocapture"]
fn bench_scan_throughput() {
    for frame_len in [64 << 10, 1 << 10, 16] {
        let (gbps, ns_per_frame) = bench(frame_len);
        println!("scan {} B masked frames in 64 KiB reads: {gbps:.1} GB/s, {ns_per_frame:.2} ns/frame", frame_len);
    }
}

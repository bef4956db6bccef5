//! Shared by the `scanner` fuzz target and `tests/fuzz_regressions.rs`: the input layout of
//! the target, and a reference reading of RFC 6455 framing that walks a whole stream frame by
//! frame (no chunks, no state machine), to check the streaming scanner's verdicts against.

use wsingress::ws::{Role, ScanError};

/// One fuzz input: byte 0 the message limit (0 = none, else 3 × the byte); byte 1 how many cut
/// sizes follow (low 4 bits) and who sends (bit 7: the server, else the client); the cut
/// sizes; the rest is the stream.
pub struct Input<'a> {
    pub limit: Option<u64>,
    pub sender: Role,
    pub cuts: &'a [u8],
    pub stream: &'a [u8],
}

pub fn decode(input: &[u8]) -> Option<Input<'_>> {
    let (&limit, rest) = input.split_first()?;
    let (&layout, rest) = rest.split_first()?;
    let ncuts = usize::from(layout & 0x0F).min(rest.len());
    let (cuts, stream) = rest.split_at(ncuts);
    let sender = if layout & 0x80 != 0 { Role::Server } else { Role::Client };
    Some(Input { limit: (limit != 0).then(|| u64::from(limit) * 3), sender, cuts, stream })
}

/// What the reference reading found: complete frame headers before the first refused one,
/// and why that one was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub frames: u64,
    pub error: Option<ScanError>,
}

/// Walk `stream` frame by frame. A frame counts once its whole header is there; the first
/// header that breaks a rule ends the walk. Rules, in the order the scanner reports them (the
/// order in which the header's bytes decide them): fragmentation (§5.4), control frames final
/// (§5.5), known opcodes (§5.2); masking by sender (§5.1), control frames at most 125 bytes in
/// the 7-bit length (§5.5); the 64-bit length's top bit (§5.2), then the size limit.
pub fn verdict(sender: Role, limit: Option<u64>, stream: &[u8]) -> Verdict {
    let mut frames = 0;
    let mut at = 0usize;
    // Payload declared so far by the open fragmented message, if one is open.
    let mut open: Option<u64> = None;
    let refuse = |frames, e| Verdict { frames, error: Some(e) };
    while at < stream.len() {
        let b0 = stream[at];
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        match (opcode, open) {
            (0x0, None) => return refuse(frames, ScanError::OrphanContinuation),
            (0x1 | 0x2, Some(_)) => return refuse(frames, ScanError::InterleavedMessage { opcode }),
            (0x8..=0xA, _) if !fin => return refuse(frames, ScanError::FragmentedControl { opcode }),
            (0x0..=0x2 | 0x8..=0xA, _) => {}
            _ => return refuse(frames, ScanError::ReservedOpcode { opcode }),
        }
        let Some(&b1) = stream.get(at + 1) else { break };
        let masked = b1 & 0x80 != 0;
        if masked != (sender == Role::Client) {
            let e = if masked { ScanError::MaskedServerFrame } else { ScanError::UnmaskedClientFrame };
            return refuse(frames, e);
        }
        if opcode >= 0x8 && b1 & 0x7F > 125 {
            return refuse(frames, ScanError::ControlTooLong { opcode });
        }
        let extended = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extended + if masked { 4 } else { 0 };
        if stream.len() < at + header {
            break;
        }
        let len = match extended {
            0 => u64::from(b1 & 0x7F),
            2 => u64::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]])),
            _ => u64::from_be_bytes(stream[at + 2..at + 10].try_into().expect("8 bytes")),
        };
        if len >= 1 << 63 {
            return refuse(frames, ScanError::LengthOverflow);
        }
        let size = if opcode == 0x0 { open.unwrap_or(0).saturating_add(len) } else { len };
        if let Some(limit) = limit.filter(|&l| size > l) {
            return refuse(frames, ScanError::MessageTooBig { size, limit });
        }
        if opcode < 0x8 {
            open = (!fin).then_some(size);
        }
        frames += 1;
        // A payload that runs past the end leaves the walk inside this frame.
        let Some(next) = usize::try_from(len).ok().and_then(|l| (at + header).checked_add(l)) else { break };
        at = next;
    }
    Verdict { frames, error: None }
}

//! Streaming RFC 6455 frame-header scanner that follows one direction of a WebSocket
//! stream without copying or modifying it, enforces the framing rules an intermediary can
//! judge from frame headers alone, and the encoder for control frames the proxy injects itself.
//!
//! # What the scanner checks, and what it leaves to the endpoints
//!
//! The relay forwards bytes unchanged; the scanner follows the framing so that the relay can
//! count messages, see pongs and Close codes and inject its own frames at frame boundaries,
//! and it refuses a frame whose *header* breaks RFC 6455 ([`ScanError`], Close 1002, or 1009
//! for the size limit). Each rule is judged as soon as the header bytes that decide it have
//! arrived, in this order:
//!
//! 1. from the first byte (FIN, opcode) and the message in progress:
//!    - §5.4: a fragmented message is "a single frame with the FIN bit clear and an opcode
//!      other than 0, followed by zero or more frames with the FIN bit clear and the opcode
//!      set to 0, and terminated by a single frame with the FIN bit set and an opcode of 0",
//!      and "The fragments of one message MUST NOT be interleaved between the fragments of
//!      another message" ([`ScanError::OrphanContinuation`], [`ScanError::InterleavedMessage`]);
//!    - §5.5: "All control frames ... MUST NOT be fragmented." ([`ScanError::FragmentedControl`]);
//!    - §5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the
//!      WebSocket Connection_." (0x3–0x7 and 0xB–0xF: [`ScanError::ReservedOpcode`]);
//! 2. from the second byte (MASK, 7-bit length):
//!    - §5.1: "a client MUST mask all frames that it sends to the server" and "A server MUST
//!      NOT mask any frames that it sends to the client" ([`ScanError::UnmaskedClientFrame`],
//!      [`ScanError::MaskedServerFrame`]; the scanner knows which end sends, [`Role`]);
//!    - §5.5: "All control frames MUST have a payload length of 125 bytes or less": a 7-bit
//!      length of 126 or 127 announces more ([`ScanError::ControlTooLong`]);
//! 3. from the whole header (the extended length):
//!    - §5.2: "the most significant bit MUST be 0" in a 64-bit length
//!      ([`ScanError::LengthOverflow`]);
//!    - the proxy's own limit, `max-message-bytes`, on every opcode: a data message is the
//!      sum of its fragments, a control frame is its own payload ([`ScanError::MessageTooBig`]).
//!
//! A header that breaks several rules gets the first in that order, however it is split.
//! Judging early matters to the relay: the bytes of a header split across reads are
//! forwarded as they come, so a rule decided by the first byte is enforced before any byte
//! of the bad frame leaves, whoever chops the stream.
//!
//! Left to the endpoints, which see the same bytes:
//!
//! - **Reserved bits (RSV1–3) are passed through.** §5.2 makes them the *receiving
//!   endpoint's* business ("MUST be 0 unless an extension is negotiated that defines meanings
//!   for non-zero values ... the receiving endpoint MUST _Fail the WebSocket Connection_"),
//!   and §5.4 expects intermediaries to carry bits they do not understand: "An intermediary
//!   MUST NOT change the fragmentation of a message if any reserved bit values are used and
//!   the meaning of these values is not known to the intermediary." Extensions are
//!   negotiated end to end (§9.1: the client offers, the *server* accepts; the proxy copies
//!   both headers), and the scanner is never told which ones were: permessage-deflate
//!   (RFC 7692 §6) sets RSV1 on the first frame of a compressed message, so refusing RSV1
//!   would break compression, and allowing it without knowing the negotiation would judge
//!   only half the cases. The endpoints, which know, judge all of them.
//! - What needs the payload: invalid UTF-8 (§8.1), Close codes and reasons (§7.4, §5.5.1),
//!   data after a Close (§5.5.1).
//!
//! Fragmentation is never changed either way (§5.4): the relay does not re-frame.
//!
//! # Cost
//!
//! No allocation; the state is a few words ([`Scanner`] is 48 bytes). Payload bytes are
//! skipped arithmetically: `scan` touches only header bytes and the first two payload
//! bytes of Close frames; the framing rules are a handful of branches on header bytes
//! already read, once per frame. Measured on the development machine (release build, one
//! core of a shared 2-core VM, `cargo test --release --lib ws:: -- --ignored --nocapture`,
//! 16 MiB of masked binary frames fed in 64 KiB reads): about 7,000 GB/s with 64 KiB
//! frames (the cost is one call per read, ~9 ns) and about 98 GB/s with 1 KiB frames
//! (~10.5 ns per frame) — orders of magnitude above what a socket delivers, so the
//! scanner costs nothing next to the `read`/`write` system calls. The framing rules, measured
//! against the scanner without them (both compiled into one release binary, 16 MiB of
//! masked frames in 64 KiB reads, median of 5 runs, one core of the loaded 2-core VM): +0.1 to
//! +0.7 ns per frame with back-to-back frames of 0–16 bytes (about 5 %), nothing beyond noise
//! with 1 KiB frames, +1 to +2 ns per 64 KiB read; the state stayed at 48 bytes. The hot path
//! accepts a valid header with one branch on its first two bytes; `Scanner::on_header` and
//! the check are forced inline (out of line they cost a quarter more per small frame).

use crate::ws::close;

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest control-frame payload (RFC 6455 §5.5: "125 bytes or less").
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
const MAX_HEADER: usize = 14;
/// FIN bit of the first header byte.
const FIN: u8 = 0x80;
/// MASK bit of the second header byte.
const MASK: u8 = 0x80;

/// Which end of the connection sends the bytes a [`Scanner`] follows: it decides whether
/// frames must be masked (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client: every frame masked.
    Client,
    /// The server: no frame masked.
    Server,
}

/// A frame header that breaks RFC 6455, or a limit the scanner enforces.
///
/// After an error the stream can no longer be followed: the caller closes the connection
/// with [`ScanError::close_code`]. Later calls do not panic, but their results mean nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A 64-bit payload length with its most significant bit set (§5.2).
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
    /// A frame from the client without a mask (§5.1).
    #[error("unmasked frame from the client")]
    UnmaskedClientFrame,
    /// A frame from the server with a mask (§5.1).
    #[error("masked frame from the server")]
    MaskedServerFrame,
    /// Opcode 0x3–0x7 or 0xB–0xF (§5.2).
    #[error("reserved opcode {opcode:#x}")]
    ReservedOpcode { opcode: u8 },
    /// A control frame (close, ping, pong) without FIN (§5.5).
    #[error("fragmented control frame (opcode {opcode:#x})")]
    FragmentedControl { opcode: u8 },
    /// A control frame whose 7-bit length announces an extended length: more than 125 bytes
    /// of payload (§5.5), refused from its second byte.
    #[error("control frame (opcode {opcode:#x}) with more than 125 bytes of payload")]
    ControlTooLong { opcode: u8 },
    /// A continuation frame while no fragmented message is in progress (§5.4).
    #[error("continuation frame without a message in progress")]
    OrphanContinuation,
    /// A new text or binary frame inside a fragmented message (§5.4).
    #[error("new data frame (opcode {opcode:#x}) inside a fragmented message")]
    InterleavedMessage { opcode: u8 },
    /// A data message (the sum of its fragments) or a control frame grew past the limit.
    #[error("message of at least {size} bytes exceeds the limit of {limit}")]
    MessageTooBig { size: u64, limit: u64 },
}

impl ScanError {
    /// The close code to send both peers (RFC 6455 §7.4.1): 1009 for the size limit, 1002
    /// ("protocol error") for every framing rule.
    pub fn close_code(self) -> u16 {
        match self {
            Self::MessageTooBig { .. } => close::MESSAGE_TOO_BIG,
            _ => close::PROTOCOL_ERROR,
        }
    }

    /// A short, fixed label of the rule that was broken, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::LengthOverflow => "length_overflow",
            Self::UnmaskedClientFrame => "unmasked_client_frame",
            Self::MaskedServerFrame => "masked_server_frame",
            Self::ReservedOpcode { .. } => "reserved_opcode",
            Self::FragmentedControl { .. } => "fragmented_control",
            Self::ControlTooLong { .. } => "control_too_long",
            Self::OrphanContinuation => "orphan_continuation",
            Self::InterleavedMessage { .. } => "interleaved_message",
            Self::MessageTooBig { .. } => "message_too_big",
        }
    }
}

/// What completed inside one scanned chunk.
///
/// `scan` adds to the counters and sets the other fields when something happens, so the
/// caller resets the summary ([`Summary::reset`]) before each chunk whose offsets it reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Data messages completed: counted when the header of a FIN frame of text, binary or
    /// continuation is complete (before its payload, like the size limit), so a message
    /// is counted exactly once, in the chunk that holds the end of its final header.
    pub messages: u64,
    /// Frames whose header was completed (every opcode, including reserved ones).
    pub frames: u64,
    /// Ping frames whose header was completed.
    pub pings: u64,
    /// Pong frames whose header was completed.
    pub pongs: u64,
    /// A Close frame's header was completed in this chunk.
    pub close_seen: bool,
    /// The status code of a Close frame, set in the chunk that holds its second payload
    /// byte (unmasked with the frame's mask key; the two bytes may arrive in different
    /// chunks). Stays `None` for a Close with an empty or one-byte payload. When several
    /// codes complete while the summary accumulates, the first one is kept.
    pub close_code: Option<u16>,
    /// Offset in the scanned chunk just past the last frame that ended in it (a frame
    /// boundary, where the relay may inject its own frame); a zero-length frame ends with
    /// its header. `None` when no frame ended in the chunk.
    pub last_boundary: Option<usize>,
}

impl Summary {
    /// Clear everything before scanning the next chunk.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// A parsed frame header, not yet judged.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// First byte: FIN, RSV1–3, opcode.
    b0: u8,
    /// Second byte: MASK, 7-bit length.
    b1: u8,
    /// All zero for an unmasked frame (XOR with zero is the identity).
    mask: [u8; 4],
    /// The payload length as written (its top bit may be set: see [`Scanner::on_header`]).
    len: u64,
}

/// Length of the header whose second byte is `b1`: 2, 4 or 10 bytes, plus 4 when masked.
#[inline]
fn header_len(b1: u8) -> usize {
    let extended = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & MASK != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// Parse a complete header; `h` holds exactly `header_len(h[1])` bytes.
#[inline]
fn parse_header(h: &[u8]) -> Header {
    let (b0, b1) = (h[0], h[1]);
    let (len, key_at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&h[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        short => (u64::from(short), 2),
    };
    let mut mask = [0u8; 4];
    if b1 & MASK != 0 {
        mask.copy_from_slice(&h[key_at..key_at + 4]);
    }
    Header { b0, b1, mask, len }
}

/// Follows one direction of a WebSocket stream.
///
/// Feed it every byte of the direction, in order, in chunks of any size (a header may be
/// split anywhere); it keeps only what it needs between chunks.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Largest data message or control frame in payload bytes; `u64::MAX` when unlimited.
    limit: u64,
    /// Payload bytes of the current frame not yet seen; 0 while reading a header.
    remaining: u64,
    /// Payload declared so far by the data message in progress (its non-final frames).
    message_len: u64,
    /// Mask key of the Close frame whose code is being read (zero when unmasked).
    close_mask: [u8; 4],
    /// Bytes of a header split across chunks.
    hdr: [u8; MAX_HEADER],
    /// How many bytes of `hdr` are filled.
    hdr_len: u8,
    /// Close-code bytes still to read at the start of the current payload (0, 1 or 2).
    close_need: u8,
    /// First (unmasked) close-code byte once read.
    close_hi: u8,
    /// A non-final data frame was seen and its message has not ended yet.
    in_message: bool,
    /// Which end sends this direction (fills the byte the fields above left as padding).
    sender: Role,
}

impl Scanner {
    /// A scanner at the start of the stream `sender` writes; `max_message` limits the
    /// payload of one data message (the sum of its fragments' declared lengths, on the
    /// wire: compressed when an extension such as permessage-deflate compresses it) and of
    /// one control frame.
    pub fn new(sender: Role, max_message: Option<u64>) -> Self {
        Self {
            limit: max_message.unwrap_or(u64::MAX),
            remaining: 0,
            message_len: 0,
            close_mask: [0; 4],
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            close_need: 0,
            close_hi: 0,
            in_message: false,
            sender,
        }
    }

    /// The end whose frames this scanner follows, as given to [`Scanner::new`].
    pub fn sender(&self) -> Role {
        self.sender
    }

    /// The message limit given to [`Scanner::new`].
    pub fn max_message(&self) -> Option<u64> {
        (self.limit != u64::MAX).then_some(self.limit)
    }

    /// Follow the next bytes of the stream; the data is not modified.
    ///
    /// Adds what completed in `data` to `out`. On error, `out` holds what completed before
    /// the offending header (which is not counted as a frame), and the error is raised as
    /// soon as the header bytes that decide it are in (see the module documentation): the
    /// first byte, the second, or the whole header; never later, and before any payload.
    pub fn scan(&mut self, data: &[u8], out: &mut Summary) -> Result<(), ScanError> {
        let mut pos = 0usize;
        while pos < data.len() {
            if self.remaining > 0 {
                // Payload: read at most the two close-code bytes, skip the rest.
                while self.close_need > 0 && pos < data.len() {
                    self.close_byte(data[pos], out);
                    pos += 1;
                }
                let avail = (data.len() - pos) as u64;
                if self.remaining > avail {
                    self.remaining -= avail;
                    return Ok(());
                }
                // remaining <= avail, so it fits in usize.
                pos += self.remaining as usize;
                self.remaining = 0;
                out.last_boundary = Some(pos);
                continue;
            }

            let rest = &data[pos..];
            // Fast path: a whole header inside this chunk, parsed in place.
            if self.hdr_len == 0 && rest.len() >= 2 {
                let need = header_len(rest[1]);
                if rest.len() >= need {
                    pos += need;
                    self.on_header(parse_header(&rest[..need]), pos, out)?;
                    continue;
                }
            }

            // Slow path: the header is split; gather it in `hdr`. First the two fixed
            // bytes (they tell the full length), then the rest.
            let have = usize::from(self.hdr_len);
            let need = if have < 2 { 2 } else { header_len(self.hdr[1]) };
            let take = (need - have).min(rest.len());
            self.hdr[have..have + take].copy_from_slice(&rest[..take]);
            pos += take;
            let had = have;
            let have = have + take;
            // have <= MAX_HEADER, so it fits in u8.
            self.hdr_len = have as u8;
            if had < 2 {
                // Judge the first bytes as soon as they arrive, so that a sender who splits
                // its header gets the same verdict before the rest of it is even sent.
                if let Some(e) = self.refusal(self.hdr[0], (have >= 2).then(|| self.hdr[1])) {
                    return Err(e);
                }
            }
            if have >= 2 && have == header_len(self.hdr[1]) {
                self.hdr_len = 0;
                let header = parse_header(&self.hdr[..have]);
                self.on_header(header, pos, out)?;
            }
        }
        Ok(())
    }

    /// True between frames (no partial header, no payload pending).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.hdr_len == 0
    }

    /// True while a fragmented data message is in progress (a non-final data frame was
    /// seen and its final frame's header was not yet). Control frames may still come in
    /// between (RFC 6455 §5.4), so the relay may inject a ping or close at any boundary.
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// The rules decided by a header's first two bytes. The frames of a valid stream take one
    /// branch each here; which rule a refused header broke is worked out off the hot path,
    /// by [`Self::refusal`], which alone decides what is refused.
    #[inline(always)]
    fn check(&self, b0: u8, b1: u8) -> Result<(), ScanError> {
        let valid = match b0 & 0x0F {
            OP_TEXT | OP_BINARY => !self.in_message,
            OP_CONTINUATION => self.in_message,
            OP_CLOSE | OP_PING | OP_PONG => b0 & FIN != 0 && usize::from(b1 & 0x7F) <= MAX_CONTROL_PAYLOAD,
            _ => false,
        };
        if valid && (b1 & MASK != 0) == (self.sender == Role::Client) {
            return Ok(());
        }
        match self.refusal(b0, Some(b1)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The first rule that a header's first byte (`b0`: FIN and opcode, with the message in
    /// progress), then its second (`b1`: MASK and the 7-bit length, once it has arrived)
    /// breaks, in the documented order.
    #[cold]
    #[inline(never)]
    fn refusal(&self, b0: u8, b1: Option<u8>) -> Option<ScanError> {
        let opcode = b0 & 0x0F;
        let control = matches!(opcode, OP_CLOSE | OP_PING | OP_PONG);
        match opcode {
            // §5.4: a continuation belongs to a message started by a non-final text or
            // binary frame, which no other data frame may interrupt.
            OP_CONTINUATION if !self.in_message => return Some(ScanError::OrphanContinuation),
            OP_TEXT | OP_BINARY if self.in_message => return Some(ScanError::InterleavedMessage { opcode }),
            // §5.5: control frames "MUST NOT be fragmented".
            _ if control && b0 & FIN == 0 => return Some(ScanError::FragmentedControl { opcode }),
            // §5.2: 0x3–0x7 and 0xB–0xF are reserved.
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Some(ScanError::ReservedOpcode { opcode }),
        }
        let b1 = b1?;
        // §5.1: clients mask every frame, servers none.
        let masked = b1 & MASK != 0;
        if masked != (self.sender == Role::Client) {
            return Some(if masked { ScanError::MaskedServerFrame } else { ScanError::UnmaskedClientFrame });
        }
        // §5.5: "All control frames MUST have a payload length of 125 bytes or less": the
        // 7-bit length says it (126 and 127 announce an extended length).
        if control && usize::from(b1 & 0x7F) > MAX_CONTROL_PAYLOAD {
            return Some(ScanError::ControlTooLong { opcode });
        }
        None
    }

    /// A complete header ending at `end` in the current chunk. Always inlined: it is the
    /// per-frame step, and as an out-of-line call it costs about a quarter of the scan time
    /// with small frames.
    #[inline(always)]
    fn on_header(&mut self, h: Header, end: usize, out: &mut Summary) -> Result<(), ScanError> {
        self.check(h.b0, h.b1)?;
        // §5.2: "If 127, the following 8 bytes interpreted as a 64-bit unsigned integer (the
        // most significant bit MUST be 0) are the payload length."
        if h.len >> 63 != 0 {
            return Err(ScanError::LengthOverflow);
        }
        let opcode = h.b0 & 0x0F;
        // A data message is the sum of its fragments (control frames in between do not
        // count); a control frame is a message of its own.
        let size = if opcode == OP_CONTINUATION { self.message_len.saturating_add(h.len) } else { h.len };
        if size > self.limit {
            return Err(self.too_big(size));
        }
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                if h.b0 & FIN != 0 {
                    self.message_len = 0;
                    self.in_message = false;
                    out.messages += 1;
                } else {
                    self.message_len = size;
                    self.in_message = true;
                }
            }
            OP_CLOSE => {
                out.close_seen = true;
                // §5.5.1: "If there is a body, the first two bytes of the body MUST be a
                // 2-byte unsigned integer (in network byte order) representing a status
                // code". A one-byte body carries no code.
                if h.len >= 2 {
                    self.close_need = 2;
                    self.close_mask = h.mask;
                }
            }
            OP_PING => out.pings += 1,
            OP_PONG => out.pongs += 1,
            // `check` let no other opcode through.
            _ => {}
        }
        out.frames += 1;
        self.remaining = h.len;
        if h.len == 0 {
            out.last_boundary = Some(end);
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn too_big(&self, size: u64) -> ScanError {
        ScanError::MessageTooBig { size, limit: self.limit }
    }

    /// One of the first two payload bytes of a Close frame (with `close_need > 0` and
    /// `remaining > 0`).
    #[inline]
    fn close_byte(&mut self, byte: u8, out: &mut Summary) {
        // Payload offset 0 or 1: unmasked with key byte 0 or 1 (§5.3: "j = i MOD 4").
        let index = usize::from(2 - self.close_need);
        let byte = byte ^ self.close_mask[index];
        if index == 0 {
            self.close_hi = byte;
        } else if out.close_code.is_none() {
            out.close_code = Some(u16::from_be_bytes([self.close_hi, byte]));
        }
        self.close_need -= 1;
        self.remaining -= 1;
    }
}

/// Encode a control frame (FIN set; opcode close, ping or pong, given in its low 4 bits),
/// masked with `mask` when given (frames towards a server must be masked, RFC 6455 §5.3).
/// A payload longer than 125 bytes (§5.5) is cut to its first 125 bytes; build Close
/// payloads with [`crate::ws::close::close_payload`], which always fits. Returns the
/// bytes written at the start of `out`.
pub fn encode_control(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut [u8; 131]) -> usize {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let len = payload.len();
    out[0] = FIN | (opcode & 0x0F);
    // len <= 125, so it fits the 7-bit length.
    let len7 = len as u8;
    match mask {
        None => {
            out[1] = len7;
            out[2..2 + len].copy_from_slice(payload);
            2 + len
        }
        Some(key) => {
            out[1] = MASK | len7;
            out[2..6].copy_from_slice(&key);
            for (i, (dst, src)) in out[6..6 + len].iter_mut().zip(payload).enumerate() {
                *dst = src ^ key[i & 3];
            }
            6 + len
        }
    }
}

#[cfg(test)]
mod tests;

//! Streaming frame-header scanner (interface; implementation by the ws work).

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Framing the scanner cannot follow, or a limit it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A 64-bit payload length with its most significant bit set (RFC 6455 §5.2).
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
    /// A data message grew past the configured limit.
    #[error("message of at least {size} bytes exceeds the limit of {limit}")]
    MessageTooBig { size: u64, limit: u64 },
}

/// What completed inside one scanned chunk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Data messages completed (a FIN frame of text, binary or continuation).
    pub messages: u64,
    /// Frames whose header was completed.
    pub frames: u64,
    pub pings: u64,
    pub pongs: u64,
    /// A Close frame's header was seen in this chunk.
    pub close_seen: bool,
    /// Its status code once both code bytes were seen (unmasked); `None` for a Close without code.
    pub close_code: Option<u16>,
    /// Offset just past the last frame that ended in this chunk (a frame boundary).
    pub last_boundary: Option<usize>,
}

/// Follows one direction of a WebSocket stream.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    max_message: Option<u64>,
}

impl Scanner {
    pub fn new(max_message: Option<u64>) -> Self {
        Self { max_message }
    }

    /// Follow the next bytes of the stream; the data is not modified.
    pub fn scan(&mut self, data: &[u8], out: &mut Summary) -> Result<(), ScanError> {
        let _ = (data, out, self.max_message);
        Ok(())
    }

    /// True between frames (no partial header, no payload pending).
    pub fn at_boundary(&self) -> bool {
        true
    }
}

/// Encode a control frame (payload ≤ 125 bytes), masked with `mask` when given
/// (frames towards a server must be masked, RFC 6455 §5.3). Returns the bytes written.
pub fn encode_control(
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut [u8; 131],
) -> usize {
    let _ = (opcode, payload, mask, out);
    0
}

//! Close codes (RFC 6455 §7.4).

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: going away (shutdown, drain, idle timeout).
pub const GOING_AWAY: u16 = 1001;
/// 1002: protocol error (malformed framing).
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1009: message too big.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: internal error (backend vanished).
pub const INTERNAL_ERROR: u16 = 1011;
/// 1013: try again later (too many connections).
pub const TRY_AGAIN_LATER: u16 = 1013;
/// 1014: bad gateway.
pub const BAD_GATEWAY: u16 = 1014;

/// Write a Close payload: the code big-endian, then `reason` cut to fit 123 bytes at a
/// character boundary. Returns the payload length.
pub fn close_payload(code: u16, reason: &str, buf: &mut [u8; 125]) -> usize {
    buf[..2].copy_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    buf[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

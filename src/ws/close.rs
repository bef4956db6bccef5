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

/// Longest Close reason: a control payload holds at most 125 bytes (RFC 6455 §5.5), two
/// of which are the code.
pub const MAX_REASON: usize = 123;

/// Build a Close frame body (RFC 6455 §5.5.1): the 2-byte big-endian `code`, then
/// `reason` as UTF-8, cut at a character boundary to fit 123 bytes. Returns the bytes
/// written at the start of `buf`.
pub fn close_payload(code: u16, reason: &str, buf: &mut [u8; 125]) -> usize {
    let mut end = reason.len().min(MAX_REASON);
    // Index 0 is always a boundary, so this stops.
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    buf[..2].copy_from_slice(&code.to_be_bytes());
    buf[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

/// Whether `code` may appear in a Close frame on the wire (RFC 6455 §7.4).
///
/// §7.4.1 defines 1000–1003 and 1007–1011; IANA registered 1012 (service restart), 1013
/// (try again later) and 1014 (bad gateway) since. 1004 is reserved, and 1005, 1006 and
/// 1015 "MUST NOT be set as a status code in a Close control frame by an endpoint". §7.4.2:
/// 0–999 are not used, 1000–2999 are reserved for the protocol and its extensions (only
/// the registered ones are valid), 3000–3999 are for libraries and frameworks (registered
/// with IANA) and 4000–4999 for private use.
pub fn is_valid_wire_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_payload_writes_big_endian_code_and_reason() {
        let mut buf = [0u8; 125];
        let n = close_payload(GOING_AWAY, "drain", &mut buf);
        assert_eq!(&buf[..n], b"\x03\xe9drain");
        let n = close_payload(NORMAL, "", &mut buf);
        assert_eq!(&buf[..n], &[0x03, 0xe8]);
    }

    #[test]
    fn close_payload_cuts_long_reasons_at_a_char_boundary() {
        let mut buf = [0u8; 125];
        // 123 ASCII bytes fit exactly; one more is dropped.
        let ascii = "a".repeat(124);
        assert_eq!(close_payload(NORMAL, &ascii, &mut buf), 125);
        // 'é' is 2 bytes: 61 of them are 122 bytes; the 62nd would end at 124 > 123.
        let accents = "é".repeat(70);
        let n = close_payload(INTERNAL_ERROR, &accents, &mut buf);
        assert_eq!(n, 2 + 122);
        let reason = std::str::from_utf8(&buf[2..n]).expect("valid UTF-8");
        assert_eq!(reason, "é".repeat(61));
        // A 4-byte character straddling byte 123 is dropped whole.
        let mixed = format!("{}🦀", "x".repeat(121));
        let n = close_payload(NORMAL, &mixed, &mut buf);
        assert_eq!(n, 2 + 121);
        assert!(std::str::from_utf8(&buf[2..n]).is_ok());
    }

    #[test]
    fn wire_codes_follow_rfc_6455_and_the_iana_registry() {
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014] {
            assert!(is_valid_wire_code(code), "{code}");
        }
        for code in [3000, 3999, 4000, 4999] {
            assert!(is_valid_wire_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, u16::MAX] {
            assert!(!is_valid_wire_code(code), "{code}");
        }
        for code in [NORMAL, GOING_AWAY, PROTOCOL_ERROR, MESSAGE_TOO_BIG, INTERNAL_ERROR] {
            assert!(is_valid_wire_code(code));
        }
        assert!(is_valid_wire_code(TRY_AGAIN_LATER) && is_valid_wire_code(BAD_GATEWAY));
    }
}

//! Per-client traffic policy of a route, as plain data: who may connect (source ranges), how
//! many connections and handshakes one client address may hold or make, and how many
//! messages per second a tunnel's client may send. The proxy enforces it through `policy/`.

use std::time::Duration;

use super::cidr::SourceRanges;

/// The per-client policy of one route. The default restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientPolicy {
    /// `wsingress.io/allow-source-ranges` / `deny-source-ranges`: 403 outside them.
    pub source_ranges: SourceRanges,
    /// `wsingress.io/max-connections-per-client`: live tunnels plus requests in flight per
    /// client address on this route; more get 429. `None` = unlimited.
    pub max_connections_per_client: Option<u32>,
    /// `wsingress.io/handshake-rate` (+ `handshake-burst`): a token bucket per client address
    /// on this route; an empty bucket answers 429 with `Retry-After`.
    pub handshake_rate: Option<Rate>,
    /// `wsingress.io/max-message-rate`: messages per second a tunnel's client may send;
    /// above it the tunnel closes with 1008. `None` = unlimited.
    pub max_message_rate: Option<u32>,
}

impl ClientPolicy {
    /// Nothing to check before a request or handshake.
    pub fn admits_all(&self) -> bool {
        self.source_ranges.is_unrestricted()
            && self.max_connections_per_client.is_none()
            && self.handshake_rate.is_none()
    }
}

/// A token bucket: `tokens` per `per`, holding at most `burst` (≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub tokens: u32,
    pub per: Duration,
    pub burst: u32,
}

/// ingress-nginx's `limit-burst-multiplier` default: the burst is five times the rate.
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;

impl Rate {
    /// Tokens added per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.tokens) / self.per.as_secs_f64()
    }

    /// Parse `N/s`, `N/m` (or `N/min`), or a bare `N` (per second); the burst defaults to
    /// [`DEFAULT_BURST_MULTIPLIER`] times `N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (n, per) = match text.split_once('/') {
            Some((n, unit)) => {
                let per = match unit.trim() {
                    "s" | "sec" | "second" => Duration::from_secs(1),
                    "m" | "min" | "minute" => Duration::from_secs(60),
                    other => return Err(format!("unknown rate unit `{other}` (s or m)")),
                };
                (n.trim(), per)
            }
            None => (text, Duration::from_secs(1)),
        };
        let tokens = parse_positive(n)?;
        Ok(Self::new(tokens, per, None))
    }

    /// A rate of `tokens` per `per` with `burst` (default: the multiplier times `tokens`).
    pub fn new(tokens: u32, per: Duration, burst: Option<u32>) -> Self {
        let burst = burst.unwrap_or_else(|| tokens.saturating_mul(DEFAULT_BURST_MULTIPLIER)).max(1);
        Self { tokens, per, burst }
    }
}

/// A whole number from 1 to 1,000,000.
pub fn parse_positive(text: &str) -> Result<u32, String> {
    let text = text.trim();
    match text.parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("`{text}` is not a whole number from 1 to 1000000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_forms() {
        let r = Rate::parse("10/s").unwrap();
        assert_eq!((r.tokens, r.per, r.burst), (10, Duration::from_secs(1), 50));
        let r = Rate::parse(" 120 / m ").unwrap();
        assert_eq!((r.tokens, r.per, r.burst), (120, Duration::from_secs(60), 600));
        assert!((r.per_second() - 2.0).abs() < 1e-9);
        assert_eq!(Rate::parse("3").unwrap().per, Duration::from_secs(1));
        for bad in ["", "0/s", "-1", "1/h", "x/s", "+5", "1.5/s", "2000000"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Rate::new(1, Duration::from_secs(1), Some(0)).burst, 1, "a burst is at least one");
    }

    #[test]
    fn default_policy_admits_all() {
        assert!(ClientPolicy::default().admits_all());
        let p = ClientPolicy { max_message_rate: Some(5), ..ClientPolicy::default() };
        assert!(p.admits_all(), "the message rate is checked in the tunnel, not at admission");
        let p = ClientPolicy { max_connections_per_client: Some(1), ..ClientPolicy::default() };
        assert!(!p.admits_all());
    }
}

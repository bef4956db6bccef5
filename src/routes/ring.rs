//! A consistent-hash ring over a pool's ready endpoints, built once per endpoint set.
//!
//! Ketama style: each endpoint owns `VNODES` points derived from its address with a stable
//! hash (FNV-1a 64 finalised with splitmix64), so every replica of wsingress — whatever
//! its build — sends the same key to the same endpoint, and adding or removing one endpoint
//! of N remaps about 1/N of the keys.

use std::net::SocketAddr;

const VNODES: u32 = 160;

#[derive(Debug, Default, Clone)]
pub struct HashRing {
    /// (point, index into the pool's ready list), sorted by point.
    points: Vec<(u64, u32)>,
}

impl HashRing {
    /// `ready` is in canonical order; the ring stores positions in that order.
    pub fn new(ready: impl Iterator<Item = SocketAddr>) -> Self {
        let mut points = Vec::new();
        for (i, addr) in ready.enumerate() {
            let name = addr.to_string();
            for v in 0..VNODES {
                let mut h = Fnv::new();
                h.write(name.as_bytes());
                h.write(b"#");
                h.write(&v.to_le_bytes());
                points.push((h.finish(), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// Position (in the ready list) that owns `key`, or `None` for an empty ring.
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash_key(key);
        let i = self.points.partition_point(|&(p, _)| p < h);
        let (_, idx) = self.points[i % self.points.len()];
        Some(idx as usize)
    }
}

/// Stable 64-bit hash of a key (client IP bytes or header value).
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(key);
    h.finish()
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // splitmix64 finaliser: FNV alone is weak in its high bits for short keys.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n).map(|i| SocketAddr::from(([10, 0, 0, i], 8080))).collect()
    }

    #[test]
    fn empty_ring_picks_nothing() {
        assert_eq!(HashRing::new(std::iter::empty()).pick(b"k"), None);
    }

    #[test]
    fn spread_is_roughly_even() {
        let ring = HashRing::new(addrs(4).into_iter());
        let mut counts = [0usize; 4];
        for k in 0..20_000u32 {
            counts[ring.pick(&k.to_le_bytes()).unwrap()] += 1;
        }
        for c in counts {
            assert!((3_500..6_500).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn adding_an_endpoint_remaps_few_keys() {
        let before = HashRing::new(addrs(4).into_iter());
        let after = HashRing::new(addrs(5).into_iter());
        let a = addrs(5);
        let moved = (0..10_000u32)
            .filter(|k| {
                let key = k.to_le_bytes();
                a[before.pick(&key).unwrap()] != a[after.pick(&key).unwrap()]
            })
            .count();
        // Ideal is 1/5 = 2000 keys; everything else must stay put.
        assert!(moved < 2_800, "{moved} of 10000 keys moved");
        assert!(moved > 1_200, "{moved} of 10000 keys moved: new endpoint barely used");
    }

    #[test]
    fn same_input_same_ring() {
        let a = HashRing::new(addrs(3).into_iter());
        let b = HashRing::new(addrs(3).into_iter());
        assert_eq!(a.points, b.points);
    }
}

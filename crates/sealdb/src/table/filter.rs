//! Bloom filter over user keys: `u8 probes ‖ bits`. Checked before any block is read.

use xxhash_rust::xxh3::xxh3_64;

pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

pub(crate) struct Bloom {
    probes: u8,
    bits: Vec<u8>,
}

impl Bloom {
    /// A filter for `hashes` with about `bits_per_key` bits each.
    pub(crate) fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
        let nbits = (hashes.len() * bits_per_key).max(64);
        let nbytes = nbits.div_ceil(8);
        let nbits = nbytes * 8;
        let probes = ((bits_per_key as f64) * 0.69).round().clamp(1.0, 30.0) as u8;
        let mut out = vec![0u8; nbytes + 1];
        out[0] = probes;
        for &h in hashes {
            let (mut x, delta) = (h, h.rotate_left(33) | 1);
            for _ in 0..probes {
                let bit = (x % nbits as u64) as usize;
                out[1 + bit / 8] |= 1 << (bit % 8);
                x = x.wrapping_add(delta);
            }
        }
        out
    }

    /// Parses a filter block; `None` if malformed.
    pub(crate) fn decode(buf: &[u8]) -> Option<Bloom> {
        let (&probes, bits) = buf.split_first()?;
        ((1..=30).contains(&probes) && !bits.is_empty()).then(|| Bloom {
            probes,
            bits: bits.to_vec(),
        })
    }

    pub(crate) fn may_contain(&self, h: u64) -> bool {
        let nbits = (self.bits.len() * 8) as u64;
        let (mut x, delta) = (h, h.rotate_left(33) | 1);
        for _ in 0..self.probes {
            let bit = (x % nbits) as usize;
            if self.bits[bit / 8] & (1 << (bit % 8)) == 0 {
                return false;
            }
            x = x.wrapping_add(delta);
        }
        true
    }

    pub(crate) fn memory(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let hashes: Vec<u64> = (0..10_000u32).map(|i| key_hash(&i.to_le_bytes())).collect();
        let f = Bloom::decode(&Bloom::build(&hashes, 10)).unwrap();
        assert!(hashes.iter().all(|h| f.may_contain(*h)));
        let fp = (10_000..20_000u32)
            .filter(|i| f.may_contain(key_hash(&i.to_le_bytes())))
            .count();
        assert!(fp < 300, "false positive rate too high: {fp}/10000");
    }
}

//! Entry points for the fuzz targets: every decoder of bytes this crate reads from the
//! network or the cache, on arbitrary input. None may panic.

/// Runs `data` through every response and cache decoder.
pub fn decoders(data: &[u8]) {
    let _ = crate::cache::decode_entry(data, "https://example/u");
    crate::dcap::decode_responses(data);
    crate::snp::decode_response(data);
    let _ = sealdb_attest::utc_seconds(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    /// A fixed set of random and truncated inputs, so `cargo test` exercises the entry point.
    #[test]
    fn decoders_survive_random_and_truncated_input() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let samples: [&[u8]; 4] = [
            br#"{"tcbInfo":{"nextUpdate":"2025-07-19T10:56:11Z"},"signature":"00"}"#,
            br#"{"enclaveIdentity":{"nextUpdate":"x"},"signature":"zz"}"#,
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            br#"{"format":"sealdb-collateral-cache-v1","url":"https://example/u","fetched_at":1,"expires_at":2,"headers":{},"body":"00"}"#,
        ];
        for s in samples {
            for cut in 0..=s.len() {
                super::decoders(&s[..cut]);
            }
        }
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            super::decoders(&data);
        }
    }
}

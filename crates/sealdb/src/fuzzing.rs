//! Entry points for fuzz targets (cargo feature `fuzzing`, off by default).
//!
//! Each function runs one decoder of bytes read from disk on arbitrary input and must return
//! without panicking, whatever the input. Decoders behind authentication (block, index,
//! manifest body, WAL payload) are reached directly here, since a fuzzer cannot forge a GCM
//! tag; the store-level entry point ([`open_store_with_file`]) covers the plaintext headers
//! and framing that are parsed before authentication.

use std::sync::Arc;

use crate::codec::Reader;
use crate::fs::{MemStorage, Storage};
use crate::{Db, IterOptions, Options};

/// `KEYREGISTRY` structure (before any key is used).
pub fn decode_registry(data: &[u8]) {
    let _ = crate::keys::decode_registry(data);
}

/// `MANIFEST` header, and the manifest body as if it had authenticated.
pub fn decode_manifest(data: &[u8]) {
    let _ = crate::version::decode_header(data);
    let _ = crate::version::decode_body(data);
}

/// One value-log entry's plaintext, and a value pointer.
pub fn decode_vlog_entry(data: &[u8]) {
    let _ = crate::vlog::decode_entry(data);
    let _ = crate::vlog::Pointer::decode(data);
}

/// One WAL commit's plaintext (entry count and entries).
pub fn decode_wal_commit(data: &[u8]) {
    let _ = crate::wal::decode_commit(data, &mut |r| {
        std::hint::black_box(r);
    });
}

/// A table's footer, index and filter, and a data block with lookups in it.
pub fn decode_table_parts(data: &[u8]) {
    use crate::table::{decode_footer, decode_index, filter, Block, FOOTER_LEN};
    if data.len() >= FOOTER_LEN {
        let (body, footer) = data.split_at(data.len() - FOOTER_LEN);
        if let Ok(f) = decode_footer(footer) {
            let _ = decode_index(body, &f);
        }
    }
    if let Some(b) = filter::Bloom::decode(data) {
        let _ = b.may_contain(filter::key_hash(data));
    }
    if let Ok(block) = Block::decode(data.to_vec()) {
        for i in 0..block.len() {
            let _ = block.get(i);
        }
        let key = data.get(..data.len().min(8)).unwrap_or_default();
        let _ = block.seek_key(key);
        let _ = block.seek_internal(key, u64::MAX / 2);
    }
    let mut r = Reader::new(data);
    while crate::entry::decode(&mut r).is_ok() {}
}

/// Builds a small unencrypted store in memory, replaces the file whose name ends with
/// `suffix` (`.wal`, `.sst`, `.vlog`, `MANIFEST`) with `data`, then opens, reads, scans and verifies.
pub fn open_store_with_file(suffix: &str, data: &[u8]) {
    let mem = MemStorage::new();
    let opts = Options {
        storage: Some(Arc::new(mem.clone())),
        background_threads: false,
        memtable_size: 4 << 10,
        value_threshold: 256,
        ..Options::default()
    };
    let image = {
        let Ok(db) = Db::open("", opts.clone()) else {
            return;
        };
        for i in 0..64u32 {
            let _ = db.put(format!("key{i:03}").as_bytes(), b"some value bytes");
        }
        for i in 0..8u32 {
            let _ = db.put(format!("big{i}").as_bytes(), &[7u8; 300]);
        }
        let _ = db.flush();
        let _ = db.put(b"in-the-wal", b"v");
        let _ = db.sync();
        // A crash now: the image keeps the WAL's last commit; closing the store afterwards
        // does not change the image.
        mem.crash_image(|_, _| 0)
    };
    let Some(name) = image
        .list()
        .ok()
        .and_then(|names| names.into_iter().find(|n| n.ends_with(suffix)))
    else {
        return;
    };
    image.with_file_mut(&name, |d| {
        d.clear();
        d.extend_from_slice(data);
    });
    let opts = Options {
        storage: Some(Arc::new(image)),
        ..opts
    };
    let _ = crate::verify_store("", &opts);
    if let Ok(db) = Db::open("", opts) {
        let _ = db.get(b"key007");
        if let Ok(it) = db.iter(IterOptions::default()) {
            for kv in it {
                if kv.is_err() {
                    break;
                }
            }
        }
        let _ = db.verify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random byte source (no dependency, same inputs every run).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn decoders_survive_random_and_truncated_input() {
        for seed in 0..3000u64 {
            let data = noise(seed, (seed % 300) as usize);
            decode_registry(&data);
            decode_manifest(&data);
            decode_wal_commit(&data);
            decode_table_parts(&data);
            decode_vlog_entry(&data);
        }
        // Plausible prefixes: valid magics followed by noise.
        for seed in 0..500u64 {
            for magic in [&b"SEALKREG"[..], b"SEALMANI"] {
                let mut d = magic.to_vec();
                d.extend_from_slice(&[1, 0]);
                d.extend(noise(seed, (seed % 120) as usize));
                decode_registry(&d);
                decode_manifest(&d);
            }
        }
    }

    #[test]
    fn store_survives_garbage_files() {
        for seed in 0..40u64 {
            let data = noise(seed, (seed * 37 % 600) as usize);
            for suffix in [".wal", ".sst", "MANIFEST", ".vlog"] {
                open_store_with_file(suffix, &data);
            }
        }
    }
}

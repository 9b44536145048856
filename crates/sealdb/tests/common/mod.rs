//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use sealdb::{HostKeyProvider, KeyProvider, Options};

pub fn key_provider(seed: u8) -> Arc<dyn KeyProvider> {
    let key = sealdb_crypto::SecretKey::from_slice(&[seed; 32]).unwrap();
    Arc::new(HostKeyProvider::new(&key))
}

/// Options that make the tree move: tiny memtables, blocks and levels.
pub fn small_options(encrypted: bool) -> Options {
    Options {
        memtable_size: 32 << 10,
        max_immutable_memtables: 2,
        block_size: 512,
        level0_compaction_trigger: 2,
        base_level_size: 64 << 10,
        target_file_size: 32 << 10,
        key_provider: encrypted.then(|| key_provider(7)),
        ..Options::default()
    }
}

/// How many rounds or seeds a randomized test runs: `default`, or more with
/// `SEALDB_STRESS=N` (a multiplier) for longer runs outside CI.
pub fn rounds(default: u64) -> u64 {
    let k: u64 = std::env::var("SEALDB_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    default * k.max(1)
}

/// Everything a store holds, by a full scan.
pub fn contents(db: &sealdb::Db) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    db.iter(sealdb::IterOptions::default())
        .unwrap()
        .map(|kv| {
            let kv = kv.unwrap();
            (kv.key, kv.value)
        })
        .collect()
}

/// Every file in `dir` with its bytes.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

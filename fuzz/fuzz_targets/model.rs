#![no_main]
//! The engine against a BTreeMap: random puts, deletes, transactions, flushes and reopen
//! (with crashes: unsynced data may be lost, so the model is checked after synced reopen only).
use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use sealdb::fs::MemStorage;
use sealdb::{Db, IterOptions, Options};

#[derive(Arbitrary, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Txn(Vec<(u8, Option<Vec<u8>>)>),
    Flush,
    Reopen,
    Get(u8),
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k % 64]
}

libfuzzer_sys::fuzz_target!(|ops: Vec<Op>| {
    let mem = MemStorage::new();
    let opts = Options {
        storage: Some(Arc::new(mem)),
        background_threads: false,
        memtable_size: 2 << 10,
        block_size: 256,
        level0_compaction_trigger: 2,
        base_level_size: 8 << 10,
        target_file_size: 4 << 10,
        ..Options::default()
    };
    let mut db = Db::open("", opts.clone()).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for op in ops.into_iter().take(200) {
        match op {
            Op::Put(k, v) => {
                db.put(&key(k), &v).unwrap();
                model.insert(key(k), v);
            }
            Op::Delete(k) => {
                db.delete(&key(k)).unwrap();
                model.remove(&key(k));
            }
            Op::Txn(writes) => {
                let mut txn = db.begin().unwrap();
                for (k, v) in &writes {
                    match v {
                        Some(v) => txn.set(&key(*k), v).unwrap(),
                        None => txn.delete(&key(*k)).unwrap(),
                    }
                }
                txn.commit().unwrap();
                for (k, v) in writes {
                    match v {
                        Some(v) => model.insert(key(k), v),
                        None => model.remove(&key(k)),
                    };
                }
            }
            Op::Flush => db.flush().unwrap(),
            Op::Reopen => {
                db.close().unwrap();
                db = Db::open("", opts.clone()).unwrap();
            }
            Op::Get(k) => assert_eq!(db.get(&key(k)).unwrap(), model.get(&key(k)).cloned()),
        }
    }
    let got: BTreeMap<Vec<u8>, Vec<u8>> = db
        .iter(IterOptions::default())
        .unwrap()
        .map(|kv| {
            let kv = kv.unwrap();
            (kv.key, kv.value)
        })
        .collect();
    assert_eq!(got, model);
});

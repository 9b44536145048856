//! The value log: large values apart from the tree, GC, crashes and tampering.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealdb::fs::{MemStorage, Storage};
use sealdb::{Db, IterOptions, Options};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn vlog_options(encrypted: bool) -> Options {
    Options {
        value_threshold: 256,
        value_log_file_size: 64 << 10,
        value_log_gc_ratio: None,
        ..small_options(encrypted)
    }
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.gen_bool(0.5) {
        rng.gen_range(0..200)
    } else {
        rng.gen_range(256..3000)
    };
    (0..len).map(|_| rng.gen()).collect()
}

fn gc_until_done(db: &Db) -> u64 {
    let mut collected = 0;
    for _ in 0..100 {
        let r = db.run_value_log_gc(0.01).unwrap();
        collected += r.files_collected;
        if r.files_collected == 0 {
            break;
        }
    }
    collected
}

#[test]
fn model_with_large_values_overwrites_gc_and_reopen() {
    for seed in 21..21 + rounds(2) {
        let encrypted = seed % 2 == 1;
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), vlog_options(encrypted)).unwrap();
        let mut model = Model::new();
        for round in 0..8 {
            for _ in 0..300 {
                let k = format!("k{:03}", rng.gen_range(0..250)).into_bytes();
                if rng.gen_bool(0.15) {
                    db.delete(&k).unwrap();
                    model.remove(&k);
                } else {
                    let v = value(&mut rng);
                    db.put(&k, &v).unwrap();
                    model.insert(k, v);
                }
            }
            if round % 2 == 1 {
                db.flatten().unwrap();
                gc_until_done(&db);
            }
            assert!(
                contents(&db) == model,
                "seed {seed} round {round}: differs from the model"
            );
            for (k, v) in model.iter().take(20) {
                assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
            }
            if round % 3 == 2 {
                db.close().unwrap();
                db = Db::open(dir.path(), vlog_options(encrypted)).unwrap();
                assert!(
                    contents(&db) == model,
                    "seed {seed} round {round}: differs after reopen"
                );
            }
        }
        let info = db.info().unwrap();
        assert!(!info.value_log_files.is_empty());
        db.close().unwrap();
        sealdb::verify_store(dir.path(), &vlog_options(encrypted)).unwrap();
    }
}

#[test]
fn space_after_five_overwrites_and_gc_is_at_most_one_and_a_half_times_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        value_threshold: 1024,
        value_log_file_size: 1 << 20,
        value_log_gc_ratio: None,
        ..small_options(true)
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let n = 300u32;
    let mut rng = StdRng::seed_from_u64(5);
    for _round in 0..5 {
        for i in 0..n {
            let v: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
            db.put(format!("key{i:04}").as_bytes(), &v).unwrap();
        }
    }
    db.flatten().unwrap();
    let collected = gc_until_done(&db);
    assert!(collected > 0, "GC collected nothing");
    db.close().unwrap();
    let live = u64::from(n) * (4096 + 7);
    let on_disk: u64 = snapshot(dir.path())
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum();
    assert!(
        on_disk as f64 <= 1.5 * live as f64,
        "store is {on_disk} bytes for {live} bytes of live data"
    );
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(db.iter(IterOptions::default()).unwrap().count(), n as usize);
    db.close().unwrap();
    sealdb::verify_store(dir.path(), &opts).unwrap();
}

#[test]
fn no_plaintext_of_large_values_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), vlog_options(true)).unwrap();
    let marker = b"VLOG-MARKER-91c2";
    for i in 0..200u32 {
        let v = [marker.repeat(100), i.to_le_bytes().to_vec()].concat();
        db.put(
            format!("{}-{i}", String::from_utf8_lossy(marker)).as_bytes(),
            &v,
        )
        .unwrap();
    }
    db.close().unwrap();
    let files = snapshot(dir.path());
    assert!(files.iter().any(|(n, _)| n.ends_with(".vlog")));
    for (name, bytes) in files {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{name} holds plaintext"
        );
    }
}

#[test]
fn tampered_value_log_is_detected_and_never_returns_a_wrong_value() {
    let mem = MemStorage::new();
    let opts = Options {
        storage: Some(Arc::new(mem.clone())),
        background_threads: false,
        ..vlog_options(true)
    };
    let db = Db::open("", opts.clone()).unwrap();
    let mut data = Model::new();
    for i in 0..60u32 {
        let v = vec![i as u8; 700];
        db.put(format!("k{i:02}").as_bytes(), &v).unwrap();
        data.insert(format!("k{i:02}").into_bytes(), v);
    }
    db.close().unwrap();
    let vlogs: Vec<String> = mem
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".vlog"))
        .collect();
    assert!(!vlogs.is_empty());
    let mut rng = StdRng::seed_from_u64(1);
    for name in &vlogs {
        let len = mem.read_all(name).unwrap().len();
        for _ in 0..60 {
            let pos = rng.gen_range(0..len);
            let copy = mem.crash_image(|_, _| 0);
            copy.with_file_mut(name, |d| d[pos] ^= 1 << rng.gen_range(0..8))
                .unwrap();
            let copy_opts = Options {
                storage: Some(Arc::new(copy)),
                ..opts.clone()
            };
            let err =
                sealdb::verify_store("", &copy_opts).expect_err("a flipped byte passed verify");
            assert!(err.is_integrity(), "{err}");
            let db = match Db::open("", copy_opts) {
                Ok(db) => db,
                Err(e) => {
                    // Open scans a value-log file not yet known complete: it names the damage.
                    assert!(e.is_integrity() && e.to_string().contains(".vlog"), "{e}");
                    continue;
                }
            };
            for (k, v) in &data {
                match db.get(k) {
                    Ok(Some(got)) => assert_eq!(&got, v, "a wrong value was returned"),
                    Ok(None) => panic!("a key vanished"),
                    Err(e) => {
                        assert!(e.is_integrity(), "{e}");
                        assert!(
                            e.to_string().contains(".vlog"),
                            "error does not name the file: {e}"
                        );
                    }
                }
            }
        }
    }
    // A deleted value-log file: reads fail with an integrity error, verify fails.
    let copy = mem.crash_image(|_, _| 0);
    copy.remove(&vlogs[0]).unwrap();
    let copy_opts = Options {
        storage: Some(Arc::new(copy)),
        ..opts
    };
    assert!(sealdb::verify_store("", &copy_opts)
        .unwrap_err()
        .is_integrity());
}

#[test]
fn crashes_and_faults_during_gc_lose_nothing() {
    let mut rng = StdRng::seed_from_u64(77);
    let mut countdowns = vec![0i64, 1, 2, 3, 5, 8, 13, 21, 40, 80, 160, 1000];
    countdowns.extend((0..rounds(1) as i64 - 1).map(|k| 3 + 7 * k));
    for countdown in countdowns {
        let mem = MemStorage::new();
        let opts = Options {
            storage: Some(Arc::new(mem.clone())),
            sync_writes: true,
            ..vlog_options(true)
        };
        let db = Db::open("", opts.clone()).unwrap();
        let mut model = Model::new();
        // Later rounds overwrite only even keys: the first files stay half live.
        for round in 0..3 {
            for i in (0..80u32).filter(|i| round == 0 || i % 2 == 0) {
                let v: Vec<u8> = (0..rng.gen_range(300..1500)).map(|_| rng.gen()).collect();
                db.put(format!("k{i:03}").as_bytes(), &v).unwrap();
                model.insert(format!("k{i:03}").into_bytes(), v);
            }
        }
        db.flatten().unwrap();
        mem.fail_after(countdown);
        let mut rewritten = 0;
        for _ in 0..20 {
            match db.run_value_log_gc(0.01) {
                Ok(r) if r.files_collected > 0 => rewritten += r.entries_rewritten,
                _ => break,
            }
        }
        if countdown >= 1000 {
            assert!(
                rewritten > 0,
                "GC rewrote nothing: the test does not exercise rewriting"
            );
        }
        let image = mem.crash_image(|_, n| n / 3);
        drop(db);
        let db = Db::open(
            "",
            Options {
                storage: Some(Arc::new(image)),
                ..opts
            },
        )
        .unwrap();
        assert!(
            contents(&db) == model,
            "countdown {countdown}: data lost or changed after a crash during GC"
        );
    }
}

#[test]
fn gc_of_files_still_named_by_an_unflushed_log_then_a_crash_loses_nothing() {
    let mem = MemStorage::new();
    let opts = Options {
        storage: Some(Arc::new(mem.clone())),
        sync_writes: true,
        background_threads: false,
        memtable_size: 8 << 20,
        value_threshold: 100,
        value_log_file_size: 4 << 10,
        value_log_gc_ratio: None,
        ..Options::default()
    };
    let db = Db::open("", opts.clone()).unwrap();
    let mut model = Model::new();
    for i in 0..40u32 {
        let v = vec![i as u8; 500];
        db.put(format!("k{i:02}").as_bytes(), &v).unwrap();
        model.insert(format!("k{i:02}").into_bytes(), v);
    }
    // Every complete file qualifies at ratio 0: its entries are rewritten and it is deleted,
    // while the memtable's log still holds the older pointers into it.
    let mut collected = 0;
    for _ in 0..40 {
        let r = db.run_value_log_gc(0.0).unwrap();
        collected += r.files_collected;
        if r.files_collected == 0 {
            break;
        }
    }
    assert!(collected > 0);
    db.put(b"after-gc", b"synced").unwrap();
    model.insert(b"after-gc".to_vec(), b"synced".to_vec());
    let image = mem.crash_image(|_, _| 0);
    drop(db);
    let db = Db::open(
        "",
        Options {
            storage: Some(Arc::new(image)),
            ..opts
        },
    )
    .unwrap();
    assert!(
        contents(&db) == model,
        "a synced commit was lost after GC and a crash"
    );
    assert!(db.info().unwrap().discarded_wal_tails.is_empty());
}

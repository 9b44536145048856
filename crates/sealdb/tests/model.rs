//! Randomized model test: the store against a `BTreeMap`, with transactions, batches,
//! deletes, reopen in the middle, and flush and compaction running underneath.

mod common;

use std::collections::BTreeMap;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealdb::{Db, IterOptions};

fn check_all(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>, rng: &mut StdRng) {
    let got: Vec<(Vec<u8>, Vec<u8>)> = db
        .iter(IterOptions::default())
        .unwrap()
        .map(|kv| {
            let kv = kv.unwrap();
            (kv.key, kv.value)
        })
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(got.len(), want.len(), "forward scan length");
    assert!(got == want, "forward scan differs from the model");
    let mut rev: Vec<Vec<u8>> = db
        .iter(IterOptions::default().reversed())
        .unwrap()
        .map(|kv| kv.unwrap().key)
        .collect();
    rev.reverse();
    assert!(
        rev == want.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "reverse scan differs"
    );
    for _ in 0..200 {
        let k = random_key(rng);
        assert_eq!(db.get(&k).unwrap(), model.get(&k).cloned(), "get {k:?}");
    }
    let p = vec![b'k', rng.gen_range(b'0'..=b'9')];
    let got: Vec<Vec<u8>> = db
        .iter(IterOptions::prefix(&p))
        .unwrap()
        .map(|kv| kv.unwrap().key)
        .collect();
    let want: Vec<Vec<u8>> = model
        .keys()
        .filter(|k| k.starts_with(&p))
        .cloned()
        .collect();
    assert!(got == want, "prefix scan differs");
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    format!("k{:04}", rng.gen_range(0..3000)).into_bytes()
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..200);
    (0..len).map(|_| rng.gen()).collect()
}

fn run_model(seed: u64, encrypted: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    let mut db = Db::open(dir.path(), small_options(encrypted)).unwrap();
    for round in 0..12 {
        for _ in 0..400 {
            match rng.gen_range(0..10) {
                0..=4 => {
                    let (k, v) = (random_key(&mut rng), random_value(&mut rng));
                    db.put(&k, &v).unwrap();
                    model.insert(k, v);
                }
                5 => {
                    let k = random_key(&mut rng);
                    db.delete(&k).unwrap();
                    model.remove(&k);
                }
                6..=7 => {
                    let mut txn = db.begin().unwrap();
                    let mut staged = Vec::new();
                    for _ in 0..rng.gen_range(1..8) {
                        let k = random_key(&mut rng);
                        if rng.gen_bool(0.2) {
                            txn.delete(&k).unwrap();
                            staged.push((k, None));
                        } else {
                            let v = random_value(&mut rng);
                            txn.set(&k, &v).unwrap();
                            staged.push((k, Some(v)));
                        }
                    }
                    // The transaction reads its own writes.
                    let (k, v) = staged.last().unwrap().clone();
                    assert_eq!(txn.get(&k).unwrap(), v);
                    if rng.gen_bool(0.8) {
                        txn.commit().unwrap();
                        for (k, v) in staged {
                            match v {
                                Some(v) => model.insert(k, v),
                                None => model.remove(&k),
                            };
                        }
                    }
                }
                _ => {
                    let mut b = db.write_batch();
                    for _ in 0..rng.gen_range(1..50) {
                        let (k, v) = (random_key(&mut rng), random_value(&mut rng));
                        b.put(&k, &v).unwrap();
                        model.insert(k, v);
                    }
                    b.commit().unwrap();
                }
            }
        }
        check_all(&db, &model, &mut rng);
        if round % 3 == 2 {
            db.close().unwrap();
            db = Db::open(dir.path(), small_options(encrypted)).unwrap();
            check_all(&db, &model, &mut rng);
        }
    }
    db.wait_for_background().unwrap();
    check_all(&db, &model, &mut rng);
    let info = db.info().unwrap();
    assert!(
        info.compactions > 0 || info.levels[1..].iter().any(|l| l.tables > 0),
        "compaction never ran"
    );
    db.verify().unwrap();
}

#[test]
fn model_plain() {
    run_model(1, false);
}

#[test]
fn model_encrypted() {
    run_model(2, true);
}

#[test]
fn model_more_seeds() {
    for seed in 10..10 + rounds(3) {
        run_model(seed, seed % 2 == 0);
    }
}

#[test]
fn snapshot_reads_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_options(true)).unwrap();
    for i in 0..500u32 {
        db.put(format!("k{i:04}").as_bytes(), b"old").unwrap();
    }
    let snap = db.begin_read().unwrap();
    for round in 0..6 {
        for i in 0..500u32 {
            db.put(
                format!("k{i:04}").as_bytes(),
                format!("new{round}").as_bytes(),
            )
            .unwrap();
        }
        db.flush().unwrap();
    }
    db.wait_for_background().unwrap();
    assert_eq!(snap.get(b"k0042").unwrap().unwrap(), b"old");
    assert_eq!(
        snap.iter(IterOptions::default())
            .unwrap()
            .filter(|kv| kv.as_ref().unwrap().value == b"old")
            .count(),
        500
    );
    assert_eq!(db.get(b"k0042").unwrap().unwrap(), b"new5");
}

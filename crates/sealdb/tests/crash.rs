//! Crash and fault tests on the in-memory backend: crash images keep only what was synced
//! (optionally with a torn tail of unsynced bytes); injected I/O faults poison the store.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealdb::fs::MemStorage;
use sealdb::{Db, Error, Options};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn mem_options(mem: &MemStorage, sync: bool) -> Options {
    Options {
        storage: Some(Arc::new(mem.clone())),
        sync_writes: sync,
        ..small_options(true)
    }
}

/// Applies one random commit to the store and the model.
fn random_commit(db: &Db, model: &mut Model, rng: &mut StdRng) -> sealdb::Result<()> {
    let mut staged = Vec::new();
    let mut b = db.write_batch();
    for _ in 0..rng.gen_range(1..20) {
        let k = format!("k{:04}", rng.gen_range(0..1500)).into_bytes();
        if rng.gen_bool(0.15) {
            b.delete(&k)?;
            staged.push((k, None));
        } else {
            let v: Vec<u8> = (0..rng.gen_range(1..120)).map(|_| rng.gen()).collect();
            b.put(&k, &v)?;
            staged.push((k, Some(v)));
        }
    }
    b.commit()?;
    for (k, v) in staged {
        match v {
            Some(v) => model.insert(k, v),
            None => model.remove(&k),
        };
    }
    Ok(())
}

#[test]
fn synced_commits_survive_crashes_with_torn_tails() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..rounds(8) {
        let mem = MemStorage::new();
        let db = Db::open("", mem_options(&mem, true)).unwrap();
        let mut model = Model::new();
        for _ in 0..rng.gen_range(50..400) {
            random_commit(&db, &mut model, &mut rng).unwrap();
        }
        let tear = round % 2 == 1;
        let image = mem.crash_image(|_, n| if tear { n / 2 + 1 } else { 0 });
        drop(db);
        let db = Db::open("", mem_options(&image, true)).unwrap();
        assert!(
            contents(&db) == model,
            "round {round}: a synced commit was lost"
        );
        db.close().unwrap();
    }
}

#[test]
fn unsynced_crash_recovers_a_prefix_of_commits() {
    let mut rng = StdRng::seed_from_u64(8);
    for round in 0..rounds(6) {
        let mem = MemStorage::new();
        let db = Db::open("", mem_options(&mem, false)).unwrap();
        let mut history = vec![Model::new()];
        let mut model = Model::new();
        let mut synced_at = 0;
        for i in 0..300 {
            random_commit(&db, &mut model, &mut rng).unwrap();
            history.push(model.clone());
            if i == 150 {
                db.sync().unwrap();
                synced_at = history.len() - 1;
            }
        }
        let image = mem.crash_image(|_, n| rng.gen_range(0..=n));
        drop(db);
        let db = Db::open("", mem_options(&image, false)).unwrap();
        let got = contents(&db);
        assert!(
            history[synced_at..].contains(&got),
            "round {round}: recovered state is not a prefix of commits at or after the last sync"
        );
    }
}

#[test]
fn corruption_in_the_middle_of_a_wal_is_an_error() {
    let mem = MemStorage::new();
    let db = Db::open("", mem_options(&mem, true)).unwrap();
    for i in 0..20u32 {
        db.put(format!("k{i}").as_bytes(), b"value").unwrap();
    }
    let image = mem.crash_image(|_, _| 0);
    drop(db);
    let wal = image
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .max_by_key(|n| image.read_all(n).unwrap().len())
        .unwrap();
    image.with_file_mut(&wal, |d| d[30] ^= 1).unwrap();
    match Db::open("", mem_options(&image, true)) {
        Err(Error::Integrity { file, offset, .. }) => {
            assert_eq!(file, wal);
            assert_eq!(offset, 0);
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    // Nothing about the damaged log was rewritten by the failed open.
    assert!(image.exists(&wal));
}

use sealdb::fs::Storage;

#[test]
fn injected_faults_poison_the_store_and_lose_nothing_synced() {
    let mut rng = StdRng::seed_from_u64(9);
    for countdown in [0i64, 1, 2, 3, 5, 8, 13, 40, 100, 250, 600] {
        let mem = MemStorage::new();
        let db = Db::open("", mem_options(&mem, true)).unwrap();
        let mut model = Model::new();
        for _ in 0..30 {
            random_commit(&db, &mut model, &mut rng).unwrap();
        }
        mem.fail_after(countdown);
        let mut failed = false;
        for _ in 0..400 {
            let mut attempt = model.clone();
            match random_commit(&db, &mut attempt, &mut rng) {
                Ok(()) => model = attempt,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "countdown {countdown}: no fault surfaced");
        // The store stays poisoned: every later call fails with a clear error.
        let later = db.put(b"after", b"fault");
        assert!(
            matches!(later, Err(Error::Poisoned)),
            "countdown {countdown}: got {later:?}"
        );
        assert!(matches!(db.get(b"k0001"), Err(Error::Poisoned)));
        let image = mem.crash_image(|_, _| 0);
        drop(db);
        let db = Db::open("", mem_options(&image, true)).unwrap();
        let got = contents(&db);
        for (k, v) in &model {
            assert_eq!(
                got.get(k),
                Some(v),
                "countdown {countdown}: acknowledged commit lost"
            );
        }
    }
}

#[test]
fn a_torn_tail_is_discarded_and_reported() {
    let mem = MemStorage::new();
    let db = Db::open("", mem_options(&mem, false)).unwrap();
    db.put(b"synced", b"1").unwrap();
    db.sync().unwrap();
    db.put(b"unsynced", &[7u8; 300]).unwrap();
    let image = mem.crash_image(|_, n| n / 2);
    drop(db);
    let db = Db::open("", mem_options(&image, false)).unwrap();
    assert_eq!(db.get(b"synced").unwrap().unwrap(), b"1");
    assert_eq!(db.get(b"unsynced").unwrap(), None);
    let info = db.info().unwrap();
    assert_eq!(
        info.discarded_wal_tails.len(),
        1,
        "{:?}",
        info.discarded_wal_tails
    );
}

#[test]
fn a_missing_manifest_never_turns_into_an_empty_store() {
    let mem = MemStorage::new();
    let db = Db::open("", mem_options(&mem, true)).unwrap();
    for i in 0..300u32 {
        db.put(format!("k{i}").as_bytes(), &[1u8; 64]).unwrap();
    }
    db.close().unwrap();
    let image = mem.crash_image(|_, _| 0);
    image.remove("MANIFEST").unwrap();
    let before = image.list().unwrap();
    let err = Db::open("", mem_options(&image, true)).unwrap_err();
    assert!(err.is_integrity(), "{err}");
    assert_eq!(
        image.list().unwrap(),
        before,
        "no file may be created or removed"
    );
}

#[test]
fn an_interrupted_creation_is_completed_by_the_next_open() {
    let mem = MemStorage::new();
    Db::open("", mem_options(&mem, true))
        .unwrap()
        .close()
        .unwrap();
    // As if the process died after writing the key registry, before the manifest.
    let image = mem.crash_image(|_, _| 0);
    for name in image.list().unwrap() {
        if name != "KEYREGISTRY" {
            image.remove(&name).unwrap();
        }
    }
    let opts = mem_options(&image, true);
    assert!(sealdb::verify_store("", &opts).is_err());
    let db = Db::open("", opts.clone()).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    sealdb::verify_store("", &opts).unwrap();
}

#[test]
fn corruption_at_the_end_of_a_completed_older_wal_is_an_error_not_a_discard() {
    let mem = MemStorage::new();
    let opts = Options {
        background_threads: false,
        max_immutable_memtables: 8,
        ..mem_options(&mem, true)
    };
    let db = Db::open("", opts.clone()).unwrap();
    for i in 0..400u32 {
        db.put(format!("k{i:04}").as_bytes(), &[3u8; 100]).unwrap();
    }
    let image = mem.crash_image(|_, _| 0);
    drop(db);
    let mut wals: Vec<String> = image
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect();
    wals.sort();
    assert!(
        wals.len() >= 2,
        "the test needs a frozen log and a newer one: {wals:?}"
    );
    let older = wals[0].clone();
    image.with_file_mut(&older, |d| {
        let n = d.len();
        d[n - 5] ^= 0x10;
    });
    let err = Db::open(
        "",
        Options {
            storage: Some(Arc::new(image)),
            ..opts
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { file, .. } if *file == older),
        "{err}"
    );
}

#[test]
fn a_deleted_log_in_the_middle_is_an_error() {
    let mem = MemStorage::new();
    let opts = Options {
        background_threads: false,
        max_immutable_memtables: 8,
        ..mem_options(&mem, true)
    };
    let db = Db::open("", opts.clone()).unwrap();
    for i in 0..600u32 {
        db.put(format!("k{i:04}").as_bytes(), &[5u8; 100]).unwrap();
    }
    let image = mem.crash_image(|_, _| 0);
    drop(db);
    let mut wals: Vec<String> = image
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect();
    wals.sort();
    assert!(wals.len() >= 3, "{wals:?}");
    image.remove(&wals[1]).unwrap();
    let err = Db::open(
        "",
        Options {
            storage: Some(Arc::new(image)),
            ..opts
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { file, .. } if *file == wals[2]),
        "{err}"
    );
}

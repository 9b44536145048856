//! Key management: data-key rotation, rekey, retirement and destruction, master rotation.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sealdb::{Db, Error, IterOptions, KeyState, Options};

#[test]
fn rotation_under_concurrent_writers_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_options(true);
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    // The rotator makes a fixed number of rotations; writers keep writing until it is done,
    // so every rotation happens under writes whatever the machine's speed.
    const ROTATIONS: u32 = 20;
    let rotating = AtomicBool::new(true);
    let written = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROTATIONS {
                db.rotate_data_key().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            rotating.store(false, Ordering::Release);
        });
        for (w, count) in written.iter().enumerate() {
            let (db, rotating) = (&db, &rotating);
            s.spawn(move || {
                let mut i = 0u64;
                while i < 600 || rotating.load(Ordering::Acquire) {
                    db.put(
                        format!("w{w}-{i:06}").as_bytes(),
                        format!("v{i}").as_bytes(),
                    )
                    .unwrap();
                    i += 1;
                }
                count.store(i, Ordering::Release);
            });
        }
    });
    let status = db.encryption_status().unwrap();
    assert_eq!(status.keys.len(), 1 + ROTATIONS as usize);
    db.close().unwrap();
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let got = contents(&db);
    let total: u64 = written.iter().map(|c| c.load(Ordering::Acquire)).sum();
    assert_eq!(got.len() as u64, total);
    for (w, count) in written.iter().enumerate() {
        for i in 0..count.load(Ordering::Acquire) {
            assert_eq!(
                got[format!("w{w}-{i:06}").as_bytes()],
                format!("v{i}").into_bytes()
            );
        }
    }
    db.close().unwrap();
    sealdb::verify_store(dir.path(), &opts).unwrap();
}

#[test]
fn rotation_by_unit_count_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_units_per_key: 50,
        ..small_options(true)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..400u32 {
        db.put(format!("k{i}").as_bytes(), b"value").unwrap();
    }
    let status = db.encryption_status().unwrap();
    assert!(
        status.active_key_id > 3,
        "count-based rotation did not happen: {status:?}"
    );
    for k in &status.keys {
        // A key stops sealing at the limit; a table build in progress may add its blocks.
        assert!(
            k.units_sealed < 50 + 200,
            "key {} sealed {} units",
            k.id,
            k.units_sealed
        );
    }
    drop(db);

    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        key_rotation_interval: Some(Duration::from_secs(1)),
        ..small_options(true)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    db.put(b"a", b"1").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    db.put(b"b", b"2").unwrap();
    assert!(
        db.encryption_status().unwrap().active_key_id >= 2,
        "age-based rotation did not happen"
    );
}

#[test]
fn rekey_bounds_key_age_and_destroyed_keys_shred_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        retired_key_retention: Duration::ZERO,
        ..small_options(true)
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    for i in 0..2000u32 {
        db.put(format!("key{i:05}").as_bytes(), &[b'x'; 40])
            .unwrap();
    }
    db.flush().unwrap();
    let old_key = db.encryption_status().unwrap().active_key_id;
    db.close().unwrap();
    // A copy of the store as it is now, all under the old key.
    let saved = snapshot(dir.path());

    let db = Db::open(dir.path(), opts.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let report = db.rekey(Duration::ZERO).unwrap();
    assert!(report.tasks > 0 && report.bytes_rewritten > 0);
    let status = db.encryption_status().unwrap();
    assert!(!report.keys_in_use.contains(&old_key), "{report:?}");
    assert_eq!(report.keys_in_use, vec![status.active_key_id]);
    let old = status.keys.iter().find(|k| k.id == old_key).unwrap();
    assert_eq!(old.state, KeyState::Destroyed);
    assert_eq!(db.iter(IterOptions::default()).unwrap().count(), 2000);
    db.close().unwrap();
    sealdb::verify_store(dir.path(), &opts).unwrap();

    // The old registry's wrapped key is gone from the new one.
    let registry_now = std::fs::read(dir.path().join("KEYREGISTRY")).unwrap();
    let registry_then = &saved.iter().find(|(n, _)| n == "KEYREGISTRY").unwrap().1;
    assert!(registry_now.len() < registry_then.len() + 100);

    // Put the old data files back beside the current registry: they cannot be read.
    for (name, bytes) in &saved {
        if name != "KEYREGISTRY" && name != "LOCK" {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
    }
    match Db::open(dir.path(), opts.clone()) {
        Err(e) => assert!(e.is_integrity(), "{e}"),
        Ok(db) => {
            let r: Result<Vec<_>, _> = db.iter(IterOptions::default()).unwrap().collect();
            assert!(r.unwrap_err().is_integrity());
        }
    }
}

#[test]
fn master_rotation_under_load_then_only_the_new_key_opens() {
    let dir = tempfile::tempdir().unwrap();
    let old = Options {
        key_provider: Some(key_provider(1)),
        ..small_options(false)
    };
    let new = Options {
        key_provider: Some(key_provider(2)),
        ..small_options(false)
    };
    let db = Db::open(dir.path(), old.clone()).unwrap();
    for _ in 0..20 {
        db.rotate_data_key().unwrap();
    }
    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..2u32 {
            let (db, stop, failures, written) = (&db, &stop, &failures, &written);
            s.spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) || i < 200 {
                    let k = format!("w{w}-{i:05}");
                    if db.put(k.as_bytes(), b"v").is_err()
                        || db.get(k.as_bytes()).map(|v| v.is_none()).unwrap_or(true)
                    {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        db.rotate_master_key(key_provider(2)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let n = written.load(Ordering::Relaxed) as usize;
    db.close().unwrap();
    let before = snapshot(dir.path());
    assert!(matches!(
        Db::open(dir.path(), old.clone()),
        Err(Error::WrongMasterKey(_))
    ));
    assert!(
        snapshot(dir.path()) == before,
        "the refused open changed a file"
    );
    let db = Db::open(dir.path(), new.clone()).unwrap();
    assert_eq!(db.iter(IterOptions::default()).unwrap().count(), n);
    db.close().unwrap();
    sealdb::verify_store(dir.path(), &new).unwrap();
}

#[test]
fn background_rekey_rewrites_old_tables() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_key_age: Some(Duration::from_secs(1)),
        ..small_options(true)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..1500u32 {
        db.put(format!("key{i:05}").as_bytes(), &[b'y'; 40])
            .unwrap();
    }
    db.flush().unwrap();
    let first = db.encryption_status().unwrap().active_key_id;
    std::thread::sleep(Duration::from_millis(1200));
    db.rotate_data_key().unwrap();
    // The compaction thread looks for old tables about once a second; allow a slow machine
    // up to 30 s (the loop ends as soon as the rewrite is seen).
    let mut rewritten = false;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        let status = db.encryption_status().unwrap();
        let old = status.keys.iter().find(|k| k.id == first).unwrap();
        if old.live_table_bytes == 0 {
            rewritten = true;
            break;
        }
    }
    assert!(
        rewritten,
        "tables under the old key were not rewritten in the background"
    );
    assert_eq!(db.iter(IterOptions::default()).unwrap().count(), 1500);
}

/// A key provider that can be taken away, like a vault restarting.
struct Flaky {
    inner: Arc<dyn sealdb::KeyProvider>,
    away: AtomicBool,
}

impl Flaky {
    fn check(&self) -> sealdb::Result<()> {
        if self.away.load(Ordering::SeqCst) {
            Err(Error::KeyProvider("vault unreachable (test)".into()))
        } else {
            Ok(())
        }
    }
}

impl sealdb::KeyProvider for Flaky {
    fn make_check_value(&self, aad: &[u8]) -> sealdb::Result<Vec<u8>> {
        self.check()?;
        self.inner.make_check_value(aad)
    }
    fn verify_check_value(&self, aad: &[u8], kcv: &[u8]) -> sealdb::Result<bool> {
        self.check()?;
        self.inner.verify_check_value(aad, kcv)
    }
    fn new_data_key(&self, aad: &[u8]) -> sealdb::Result<(sealdb_crypto::SecretKey, Vec<u8>)> {
        self.check()?;
        self.inner.new_data_key(aad)
    }
    fn unwrap_data_key(
        &self,
        aad: &[u8],
        wrapped: &[u8],
    ) -> sealdb::Result<Option<sealdb_crypto::SecretKey>> {
        self.check()?;
        self.inner.unwrap_data_key(aad, wrapped)
    }
    fn rewrap_data_key(
        &self,
        aad: &[u8],
        key: &sealdb_crypto::SecretKey,
    ) -> sealdb::Result<Vec<u8>> {
        self.check()?;
        self.inner.rewrap_data_key(aad, key)
    }
    fn authenticate(&self, data: &[u8]) -> sealdb::Result<Vec<u8>> {
        self.check()?;
        self.inner.authenticate(data)
    }
    fn verify(&self, data: &[u8], tag: &[u8]) -> sealdb::Result<bool> {
        self.check()?;
        self.inner.verify(data, tag)
    }
}

/// A provider that is present for now, and small-store options that use it.
fn flaky_options() -> (Arc<Flaky>, Options) {
    let flaky = Arc::new(Flaky {
        inner: key_provider(1),
        away: AtomicBool::new(false),
    });
    let opts = Options {
        key_provider: Some(flaky.clone()),
        ..small_options(false)
    };
    (flaky, opts)
}

/// While the key provider is away, commits go on (rotation that falls due waits), an explicit
/// rotation fails with `KeyProvider`, nothing is poisoned; when it is back, the rotation
/// happens. Opening while it is away is a `KeyProvider` error, never `WrongMasterKey`.
#[test]
fn a_key_provider_outage_postpones_key_upkeep_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let (flaky, opts) = flaky_options();
    let opts = Options {
        key_rotation_interval: Some(Duration::from_secs(1)),
        ..opts
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    db.put(b"before", b"1").unwrap();
    flaky.away.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    for i in 0..200u32 {
        db.put(format!("during{i}").as_bytes(), b"2").unwrap();
    }
    db.flush().unwrap();
    assert!(matches!(db.rotate_data_key(), Err(Error::KeyProvider(_))));
    assert_eq!(db.encryption_status().unwrap().active_key_id, 1);
    flaky.away.store(false, Ordering::SeqCst);
    // Upkeep waits a little after a failure (so commits do not each wait for a vault).
    std::thread::sleep(Duration::from_millis(2100));
    db.put(b"after", b"3").unwrap();
    assert!(
        db.encryption_status().unwrap().active_key_id >= 2,
        "rotation did not resume"
    );
    assert_eq!(db.get(b"during199").unwrap().as_deref(), Some(&b"2"[..]));
    db.close().unwrap();
    flaky.away.store(true, Ordering::SeqCst);
    assert!(matches!(
        Db::open(dir.path(), opts.clone()),
        Err(Error::KeyProvider(_))
    ));
    flaky.away.store(false, Ordering::SeqCst);
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"3"[..]));
}

/// Right after a reopen the provider may already be gone: the reservation made at open
/// carries the commits. But a key that reaches its unit limit with no provider to rotate it
/// stops the store (poisoned), rather than sealing past the limit.
#[test]
fn after_reopen_an_outage_is_tolerated_until_the_key_must_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (flaky, opts) = flaky_options();
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    db.put(b"a", b"1").unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    flaky.away.store(true, Ordering::SeqCst);
    for i in 0..300u32 {
        db.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    db.flush().unwrap();
    flaky.away.store(false, Ordering::SeqCst);
    db.close().unwrap();

    let limited = Options {
        max_units_per_key: 40,
        ..opts
    };
    let db = Db::open(dir.path(), limited).unwrap();
    flaky.away.store(true, Ordering::SeqCst);
    let mut failed = None;
    for i in 0..200u32 {
        if let Err(e) = db.put(format!("m{i}").as_bytes(), b"v") {
            failed = Some(e);
            break;
        }
    }
    assert!(
        matches!(failed, Some(Error::Poisoned)),
        "sealing went on past the unit limit without a provider: {failed:?}"
    );
}

/// A fault at each write or sync of a master-key rotation (the registry's temp file, its
/// sync, the rename, the directory sync): the rotation fails with an I/O error and poisons
/// the store, and afterwards exactly one of the two master keys opens it, with every
/// synced write, both from the files as they are and from what a crash would leave. When
/// only the directory sync failed, the new registry is in place: the new key opens the
/// live files (which is why both keys must be kept until a rotation reports success).
#[test]
fn a_failed_master_rotation_poisons_and_one_of_the_two_keys_opens_the_store() {
    use sealdb::fs::MemStorage;
    let opts = |mem: &MemStorage, key: u8| Options {
        storage: Some(Arc::new(mem.clone())),
        sync_writes: true,
        key_provider: Some(key_provider(key)),
        ..small_options(true)
    };
    // small_options' master key is 7; the rotation moves to 2.
    for countdown in 0..5 {
        let mem = MemStorage::new();
        let db = Db::open("", opts(&mem, 7)).unwrap();
        for i in 0..50 {
            db.put(format!("k{i:03}").as_bytes(), b"v").unwrap();
        }
        mem.fail_after(countdown);
        let r = db.rotate_master_key(key_provider(2));
        assert!(
            matches!(r, Err(Error::Io { .. })),
            "countdown {countdown}: {r:?}"
        );
        assert!(matches!(db.put(b"x", b"y"), Err(Error::Poisoned)));
        drop(db);
        mem.heal();
        let crashed = mem.crash_image(|_, _| 0);
        for (image, what) in [(crashed, "crash image"), (mem, "live files")] {
            let opening: Vec<u8> = [7u8, 2]
                .into_iter()
                .filter(|k| match Db::open("", opts(&image, *k)) {
                    Ok(db) => {
                        assert_eq!(contents(&db).len(), 50, "countdown {countdown}, {what}");
                        db.close().unwrap();
                        true
                    }
                    Err(Error::WrongMasterKey(_)) => false,
                    Err(e) => panic!("countdown {countdown}, {what}: {e}"),
                })
                .collect();
            assert_eq!(
                opening.len(),
                1,
                "countdown {countdown}, {what}: {opening:?}"
            );
            if what == "live files" {
                let expect = if countdown == 4 { 2 } else { 7 };
                assert_eq!(opening, [expect], "countdown {countdown}");
            }
        }
    }
}

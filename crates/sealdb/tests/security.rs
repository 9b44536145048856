//! Encryption at rest: no plaintext on disk, tamper detection, wrong or missing keys.

mod common;

use std::sync::Arc;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealdb::fs::{MemStorage, Storage};
use sealdb::{Db, Error, IterOptions, Options};

const MARKER: &[u8] = b"SEALDB-MARKER-7f3a";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn assert_no_marker(dir: &std::path::Path, when: &str) {
    let hex_lower = hex_of(MARKER, false);
    let hex_upper = hex_of(MARKER, true);
    let files = snapshot(dir);
    assert!(
        files.len() >= 3,
        "{when}: expected store files, found {}",
        files.len()
    );
    for (name, bytes) in files {
        for needle in [MARKER, &hex_lower[..], &hex_upper[..], b"MARKER"] {
            assert!(
                !contains(&bytes, needle),
                "{when}: {name} contains plaintext {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

fn hex_of(b: &[u8], upper: bool) -> Vec<u8> {
    b.iter()
        .flat_map(|x| {
            if upper {
                format!("{x:02X}")
            } else {
                format!("{x:02x}")
            }
            .into_bytes()
        })
        .collect()
}

#[test]
fn no_plaintext_on_disk_after_loading_50000_marked_entries() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_size: 1 << 20,
        key_provider: Some(key_provider(1)),
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let mut b = db.write_batch();
    for i in 0..50_000u32 {
        let k = [MARKER, format!("-key-{i}").as_bytes()].concat();
        let v = [b"value-".as_slice(), MARKER, format!("-{i}").as_bytes()].concat();
        b.put(&k, &v).unwrap();
    }
    b.commit().unwrap();
    db.update(|t| t.set(b"txn-key", MARKER)).unwrap();
    // While open: WAL data, frozen memtables being flushed, tables.
    assert_no_marker(dir.path(), "while open");
    db.close().unwrap();
    assert_no_marker(dir.path(), "after close");
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(
        db.iter(IterOptions::prefix(MARKER)).unwrap().count(),
        50_000
    );
    db.close().unwrap();

    // The control: an unencrypted store does show the marker, so the search works.
    let plain = tempfile::tempdir().unwrap();
    let db = Db::open(plain.path(), Options::default()).unwrap();
    db.put(MARKER, b"v").unwrap();
    db.close().unwrap();
    assert!(snapshot(plain.path())
        .iter()
        .any(|(_, b)| contains(b, MARKER)));
}

/// An encrypted store in memory with tables (several levels) and an unflushed WAL.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn tamper_fixture() -> (MemStorage, Options, Pairs) {
    let mem = MemStorage::new();
    let opts = Options {
        storage: Some(Arc::new(mem.clone())),
        sync_writes: true,
        background_threads: false,
        ..small_options(true)
    };
    let db = Db::open("", opts.clone()).unwrap();
    let mut data = Vec::new();
    for i in 0..600u32 {
        let (k, v) = (format!("key{i:05}").into_bytes(), vec![b'v'; 20]);
        db.put(&k, &v).unwrap();
        data.push((k, v));
    }
    db.flush().unwrap();
    for i in 600..640u32 {
        let (k, v) = (format!("key{i:05}").into_bytes(), vec![b'w'; 20]);
        db.put(&k, &v).unwrap();
        data.push((k, v));
    }
    let image = mem.crash_image(|_, _| 0);
    drop(db);
    let opts = Options {
        storage: Some(Arc::new(image.clone())),
        ..opts
    };
    (image, opts, data)
}

/// Opens the image and reads everything; every read is the right value or an error.
fn reads_are_right_or_errors(opts: &Options, data: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let db = match Db::open("", opts.clone()) {
        Ok(db) => db,
        Err(e) => {
            assert!(
                e.is_integrity() || matches!(e, Error::WrongMasterKey(_)),
                "unexpected open error {e}"
            );
            return true;
        }
    };
    let mut any_error = false;
    for (k, v) in data {
        match db.get(k) {
            Ok(Some(got)) => assert_eq!(&got, v, "a read returned a wrong value"),
            Ok(None) => any_error = true, // lost from a discarded WAL tail: never a wrong value
            Err(e) => {
                assert!(e.is_integrity(), "unexpected read error {e}");
                any_error = true;
            }
        }
    }
    let iter = match db.iter(IterOptions::default()) {
        Ok(it) => it,
        Err(e) => {
            assert!(e.is_integrity(), "unexpected iterator error {e}");
            return true;
        }
    };
    for kv in iter {
        match kv {
            Ok(kv) => assert!(
                data.iter().any(|(k, v)| *k == kv.key && *v == kv.value),
                "scan returned a wrong entry"
            ),
            Err(e) => {
                assert!(e.is_integrity());
                any_error = true;
                break;
            }
        }
    }
    any_error
}

#[test]
fn flipping_any_byte_of_any_file_is_detected() {
    let (image, opts, data) = tamper_fixture();
    let files = sealdb::verify_store("", &opts).unwrap().files;
    let mut rng = StdRng::seed_from_u64(3);
    assert!(files.iter().any(|f| f.ends_with(".sst")) && files.iter().any(|f| f.ends_with(".wal")));
    let mut checked = 0;
    for name in files {
        let len = image.read_all(&name).unwrap().len();
        if len == 0 {
            continue;
        }
        // Every byte of small files; a random sample of larger ones.
        let positions: Vec<usize> = if len <= 400 {
            (0..len).collect()
        } else {
            (0..150).map(|_| rng.gen_range(0..len)).collect()
        };
        for (n, pos) in positions.into_iter().enumerate() {
            let copy = image.crash_image(|_, _| 0);
            copy.with_file_mut(&name, |d| d[pos] ^= 1 << rng.gen_range(0..8))
                .unwrap();
            let copy_opts = Options {
                storage: Some(Arc::new(copy.clone())),
                ..opts.clone()
            };
            let err = sealdb::verify_store("", &copy_opts)
                .expect_err(&format!("flip in {name} at {pos} passed verify"));
            assert!(
                err.is_integrity() || matches!(err, Error::WrongMasterKey(_)),
                "{name}@{pos}: {err}"
            );
            if n % 10 == 0 {
                reads_are_right_or_errors(&copy_opts, &data);
            }
            checked += 1;
        }
    }
    assert!(checked > 500);
}

#[test]
fn swapped_blocks_and_swapped_files_are_detected() {
    let (image, opts, data) = tamper_fixture();
    let report = sealdb::verify_store("", &opts).unwrap();
    let tables: Vec<String> = report
        .files
        .into_iter()
        .filter(|n| n.ends_with(".sst"))
        .collect();
    // Entries are 40 bytes here (8-byte key, 20-byte value), so full blocks of 512-byte
    // target size hold 12 entries: 12*44+4 = 532 plaintext bytes, 560 sealed.
    let unit = 560;
    let copy = image.crash_image(|_, _| 0);
    copy.with_file_mut(&tables[0], |d| {
        let (a, b) = d.split_at_mut(unit);
        a.swap_with_slice(&mut b[..unit]);
    })
    .unwrap();
    let copy_opts = Options {
        storage: Some(Arc::new(copy)),
        ..opts.clone()
    };
    let err = sealdb::verify_store("", &copy_opts).unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { file, .. } if *file == tables[0]),
        "{err}"
    );
    assert!(
        reads_are_right_or_errors(&copy_opts, &data),
        "swapped blocks went unnoticed by reads"
    );

    // Two whole tables exchanged (names swapped).
    if tables.len() >= 2 {
        let copy = image.crash_image(|_, _| 0);
        let a = copy.read_all(&tables[0]).unwrap();
        let b = copy.read_all(&tables[1]).unwrap();
        copy.with_file_mut(&tables[0], |d| *d = b).unwrap();
        copy.with_file_mut(&tables[1], |d| *d = a).unwrap();
        let copy_opts = Options {
            storage: Some(Arc::new(copy)),
            ..opts
        };
        assert!(sealdb::verify_store("", &copy_opts)
            .unwrap_err()
            .is_integrity());
        assert!(reads_are_right_or_errors(&copy_opts, &data));
    }
}

#[test]
fn wrong_or_missing_key_fails_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let good = Options {
        key_provider: Some(key_provider(1)),
        ..Options::default()
    };
    let db = Db::open(dir.path(), good.clone()).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    let before = snapshot(dir.path());
    let wrong = Options {
        key_provider: Some(key_provider(2)),
        ..Options::default()
    };
    assert!(matches!(
        Db::open(dir.path(), wrong.clone()),
        Err(Error::WrongMasterKey(_))
    ));
    assert!(matches!(
        Db::open(dir.path(), Options::default()),
        Err(Error::KeyRequired(_))
    ));
    assert!(matches!(
        sealdb::verify_store(dir.path(), &wrong),
        Err(Error::WrongMasterKey(_))
    ));
    assert!(
        snapshot(dir.path()) == before,
        "a refused open changed a file"
    );
    let db = Db::open(dir.path(), good).unwrap();
    assert_eq!(db.get(b"k").unwrap().unwrap(), b"v");
    drop(db);

    let plain = tempfile::tempdir().unwrap();
    Db::open(plain.path(), Options::default())
        .unwrap()
        .close()
        .unwrap();
    let before = snapshot(plain.path());
    let keyed = Options {
        key_provider: Some(key_provider(1)),
        ..Options::default()
    };
    assert!(matches!(
        Db::open(plain.path(), keyed),
        Err(Error::NotEncrypted(_))
    ));
    assert!(snapshot(plain.path()) == before);
}

#[test]
fn a_deleted_registry_is_not_a_downgrade_to_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let good = Options {
        key_provider: Some(key_provider(1)),
        ..Options::default()
    };
    let db = Db::open(dir.path(), good).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    std::fs::remove_file(dir.path().join("KEYREGISTRY")).unwrap();
    let err = Db::open(dir.path(), Options::default()).unwrap_err();
    assert!(err.is_integrity(), "{err}");
}

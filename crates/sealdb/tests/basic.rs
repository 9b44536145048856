//! API behaviour: reads, writes, deletes, iterators, reopen, errors on bad use.

mod common;

use common::*;
use sealdb::{Db, Error, IterOptions, Options};

fn keys_of(it: sealdb::Iter) -> Vec<String> {
    it.map(|kv| String::from_utf8(kv.unwrap().key).unwrap())
        .collect()
}

#[test]
fn put_get_delete_survive_reopen_in_both_modes() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), small_options(encrypted)).unwrap();
        for i in 0..2000u32 {
            db.put(
                format!("key{i:05}").as_bytes(),
                format!("value{i}").as_bytes(),
            )
            .unwrap();
        }
        db.delete(b"key00007").unwrap();
        assert_eq!(db.get(b"key00008").unwrap().unwrap(), b"value8");
        assert_eq!(db.get(b"key00007").unwrap(), None);
        db.close().unwrap();
        let db = Db::open(dir.path(), small_options(encrypted)).unwrap();
        assert_eq!(db.get(b"key01999").unwrap().unwrap(), b"value1999");
        assert_eq!(db.get(b"key00007").unwrap(), None);
        assert_eq!(db.iter(IterOptions::default()).unwrap().count(), 1999);
        let info = db.info().unwrap();
        assert!(
            info.levels.iter().map(|l| l.tables).sum::<usize>() > 1,
            "tree should have tables"
        );
        assert_eq!(info.encrypted, encrypted);
        db.verify().unwrap();
        db.close().unwrap();
        sealdb::verify_store(dir.path(), &small_options(encrypted)).unwrap();
    }
}

#[test]
fn iterators_forward_reverse_prefix_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_options(true)).unwrap();
    let mut b = db.write_batch();
    for k in ["a", "ab", "abc", "b", "ba", "c"] {
        b.put(k.as_bytes(), b"v").unwrap();
    }
    b.commit().unwrap();
    db.flush().unwrap();
    db.put(b"abd", b"v").unwrap();
    db.delete(b"ba").unwrap();
    assert_eq!(
        keys_of(db.iter(IterOptions::default()).unwrap()),
        ["a", "ab", "abc", "abd", "b", "c"]
    );
    assert_eq!(
        keys_of(db.iter(IterOptions::default().reversed()).unwrap()),
        ["c", "b", "abd", "abc", "ab", "a"]
    );
    assert_eq!(
        keys_of(db.iter(IterOptions::prefix(b"ab")).unwrap()),
        ["ab", "abc", "abd"]
    );
    assert_eq!(
        keys_of(db.iter(IterOptions::prefix(b"ab").reversed()).unwrap()),
        ["abd", "abc", "ab"]
    );
    let from_b = IterOptions {
        start: Some(b"b".to_vec()),
        ..Default::default()
    };
    assert_eq!(keys_of(db.iter(from_b.clone()).unwrap()), ["b", "c"]);
    assert_eq!(
        keys_of(db.iter(from_b.reversed()).unwrap()),
        ["b", "abd", "abc", "ab", "a"]
    );
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(db.put(b"", b"x"), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        db.put(&vec![1u8; 70_000], b"x"),
        Err(Error::InvalidArgument(_))
    ));
    let txn = db.begin_read().unwrap();
    let mut txn = txn;
    assert!(matches!(txn.set(b"k", b"v"), Err(Error::TxnState(_))));
    drop(txn);
    drop(db);
    let missing = Options {
        create_if_missing: false,
        ..Options::default()
    };
    assert!(matches!(
        Db::open(dir.path().join("nope"), missing),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(
        Db::open(dir.path(), Options::default()),
        Err(Error::Locked(_))
    ));
}

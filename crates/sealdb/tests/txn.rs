//! Transactions: snapshot isolation, conflicts (write skew refused), TTL.

mod common;

use std::time::Duration;

use common::*;
use sealdb::{Db, Error, IterOptions, Options};

#[test]
fn write_skew_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.update(|t| {
        t.set(b"alice_on_call", b"1")?;
        t.set(b"bob_on_call", b"1")
    })
    .unwrap();
    // Each doctor goes off call if the other is still on call: classic write skew.
    let mut t1 = db.begin().unwrap();
    let mut t2 = db.begin().unwrap();
    assert_eq!(t1.get(b"bob_on_call").unwrap().unwrap(), b"1");
    assert_eq!(t2.get(b"alice_on_call").unwrap().unwrap(), b"1");
    t1.set(b"alice_on_call", b"0").unwrap();
    t2.set(b"bob_on_call", b"0").unwrap();
    t1.commit().unwrap();
    assert!(matches!(t2.commit(), Err(Error::Conflict)));
    assert_eq!(db.get(b"bob_on_call").unwrap().unwrap(), b"1");
}

#[test]
fn iteration_reads_count_for_conflicts_and_blind_writes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put(b"a", b"1").unwrap();
    let mut t1 = db.begin().unwrap();
    let mut t2 = db.begin().unwrap();
    assert_eq!(t1.iter(IterOptions::default()).unwrap().count(), 1);
    t1.set(b"sum", b"1").unwrap();
    t2.set(b"a", b"2").unwrap();
    t2.commit().unwrap();
    assert!(matches!(t1.commit(), Err(Error::Conflict)));
    // Blind writes never conflict.
    let mut t3 = db.begin().unwrap();
    let mut t4 = db.begin().unwrap();
    t3.set(b"x", b"3").unwrap();
    t4.set(b"x", b"4").unwrap();
    t3.commit().unwrap();
    t4.commit().unwrap();
    assert_eq!(db.get(b"x").unwrap().unwrap(), b"4");
}

#[test]
fn snapshots_do_not_see_later_commits_and_see_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_options(false)).unwrap();
    db.put(b"k", b"v1").unwrap();
    let mut t = db.begin().unwrap();
    db.put(b"k", b"v2").unwrap();
    db.put(b"new", b"x").unwrap();
    assert_eq!(t.get(b"k").unwrap().unwrap(), b"v1");
    assert_eq!(t.get(b"new").unwrap(), None);
    t.set(b"mine", b"m").unwrap();
    t.delete(b"k").unwrap();
    let keys: Vec<Vec<u8>> = t
        .iter(IterOptions::default())
        .unwrap()
        .map(|kv| kv.unwrap().key)
        .collect();
    assert_eq!(keys, vec![b"mine".to_vec()]);
    drop(t);
    assert_eq!(
        db.get(b"mine").unwrap(),
        None,
        "a dropped transaction is discarded"
    );
}

#[test]
fn concurrent_counters_lose_no_increment() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_options(true)).unwrap();
    db.put(b"counter", b"0").unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut done = 0;
                while done < 50 {
                    let r = db.update(|t| {
                        let v: u64 = String::from_utf8(t.get(b"counter")?.unwrap())
                            .unwrap()
                            .parse()
                            .unwrap();
                        t.set(b"counter", (v + 1).to_string().as_bytes())
                    });
                    match r {
                        Ok(()) => done += 1,
                        Err(Error::Conflict) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    assert_eq!(db.get(b"counter").unwrap().unwrap(), b"200");
}

#[test]
fn ttl_entries_expire_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_options(true)).unwrap();
    db.update(|t| {
        t.set_with_ttl(b"session", b"token", Duration::from_secs(1))?;
        t.set(b"forever", b"stays")
    })
    .unwrap();
    let mut b = db.write_batch();
    b.put_with_ttl(b"flushed-session", b"t2", Duration::from_secs(1))
        .unwrap();
    b.commit().unwrap();
    db.flush().unwrap();
    assert_eq!(db.get(b"session").unwrap().unwrap(), b"token");
    let kv = db
        .iter(IterOptions::prefix(b"session"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(kv.expires_at.is_some());
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(db.get(b"session").unwrap(), None);
    assert_eq!(db.get(b"flushed-session").unwrap(), None);
    let keys: Vec<Vec<u8>> = db
        .iter(IterOptions::default())
        .unwrap()
        .map(|kv| kv.unwrap().key)
        .collect();
    assert_eq!(keys, vec![b"forever".to_vec()]);
}

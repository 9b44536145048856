//! `sealdb demo`: the encrypted store end to end, in a temporary directory.

use sealdb::{Db, IterOptions, Options};

use crate::{fail, Failure};

pub(crate) fn run() -> Result<(), Failure> {
    let tmp = tempfile::tempdir()
        .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
    let dir = tmp.path().join("store");
    let key_file = tmp.path().join("master.key");
    let wrong_key = tmp.path().join("wrong.key");
    crate::keygen(&key_file)?;
    crate::keygen(&wrong_key)?;
    say!(
        "1. master key written to {} (mode 0600)",
        key_file.display()
    );

    let opts = Options::default().with_key_file(&key_file)?;
    let db = Db::open(&dir, opts.clone())?;
    say!(
        "2. created an encrypted store (AES-256-GCM) in {}",
        dir.display()
    );

    db.update(|txn| {
        txn.set(b"user/1/name", b"Ada Lovelace")?;
        txn.set(b"user/2/name", b"Grace Hopper")?;
        txn.set(b"config/motto", b"secret data stays sealed")
    })?;
    let mut batch = db.write_batch();
    for i in 0..10_000u32 {
        batch.put(
            format!("log/{i:06}").as_bytes(),
            format!("event number {i}").as_bytes(),
        )?;
    }
    batch.commit()?;
    say!("3. wrote 3 keys in a transaction and 10000 keys in a write batch");

    let v = db
        .get(b"user/1/name")?
        .ok_or_else(|| fail("user/1/name missing"))?;
    say!("4. read user/1/name = {}", String::from_utf8_lossy(&v));
    say_inline!("5. scan prefix user/:");
    for kv in db.iter(IterOptions::prefix(b"user/"))? {
        let kv = kv?;
        say_inline!(
            " {}={}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    say!();
    db.close()?;
    say!("6. closed the store (memtable flushed to an encrypted table)");

    let marker = b"Grace Hopper";
    let mut plaintext_found = false;
    for entry in std::fs::read_dir(&dir).map_err(|e| fail(e.to_string()))? {
        let path = entry.map_err(|e| fail(e.to_string()))?.path();
        let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        if bytes.windows(marker.len()).any(|w| w == marker) {
            plaintext_found = true;
            say!("   plaintext found in {}!", path.display());
        }
    }
    if plaintext_found {
        return Err(fail("plaintext found on disk"));
    }
    say!("7. searched every file in the store for \"Grace Hopper\": not found on disk");

    match Db::open(&dir, Options::default().with_key_file(&wrong_key)?) {
        Err(e) => say!("8. opening with a wrong key is refused: {e}"),
        Ok(_) => return Err(fail("the wrong key was accepted")),
    }

    let report = sealdb::verify_store(&dir, &opts)?;
    say!(
        "9. verify: {} tables, {} entries, {} WAL records authenticated",
        report.tables,
        report.entries,
        report.wal_records
    );

    let db = Db::open(&dir, opts)?;
    let n = db.iter(IterOptions::prefix(b"log/"))?.count();
    say!(
        "10. reopened with the right key: {n} log entries, motto = {}",
        String::from_utf8_lossy(&db.get(b"config/motto")?.unwrap_or_default())
    );
    say!("\nstore info:");
    crate::print_info(&db.info()?, false);
    db.close()?;
    Ok(())
}

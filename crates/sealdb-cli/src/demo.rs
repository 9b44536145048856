//! `sealdb demo`: a vault in the simulated TEE, attested provisioning, and the encrypted store
//! using it, end to end in a temporary directory.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use sealdb::{Db, IterOptions, Options};
use sealdb_vault_client::VaultKeyProvider;

use crate::{fail, Failure};

/// The vault child process; stopped when dropped.
struct VaultChild(Child);

impl Drop for VaultChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sealdb vault serve --tee sim` as a separate process for `owner`; returns it, its
/// address and its simulated platform key.
fn start_vault(socket: &Path, owner: &str) -> Result<(VaultChild, String, String), Failure> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("finding sealdb: {e}")))?;
    // The vault's audit log (challenges, provisioning) goes beside its socket.
    let log = std::fs::File::create(socket.with_extension("log"))
        .map_err(|e| fail(format!("creating the vault's log: {e}")))?;
    let mut child = Command::new(&exe)
        .args(["vault", "serve", "--tee", "sim", "--listen", "127.0.0.1:0"])
        .args(["--owner", owner, "--socket"])
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| fail(format!("starting the vault: {e}")))?;
    let stdout = child.stdout.take();
    let child = VaultChild(child);
    let mut line = String::new();
    if let Some(out) = stdout {
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| fail(format!("reading the vault's address: {e}")))?;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr = words
        .get(3)
        .ok_or_else(|| fail(format!("the vault did not start: {line:?}")))?
        .to_string();
    let platform_key = words
        .iter()
        .position(|w| *w == "key")
        .and_then(|i| words.get(i + 1))
        .map(|k| k.trim_end_matches([')', ';']).to_string())
        .ok_or_else(|| fail(format!("the vault did not name its platform key: {line:?}")))?;
    Ok((child, addr, platform_key))
}

pub(crate) fn run() -> Result<(), Failure> {
    let tmp = tempfile::tempdir()
        .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
    let dir = tmp.path().join("store");
    let key_file = tmp.path().join("master.key");
    let wrong_key = tmp.path().join("wrong.key");
    let owner_key = tmp.path().join("owner.key");
    let socket = tmp.path().join("vault.sock");
    crate::keygen(&key_file)?;
    crate::keygen(&wrong_key)?;
    crate::keygen(&owner_key)?;
    let owner = hex::encode(crate::provision::read_owner_key(&owner_key)?.public_key());
    say!(
        "1. the owner's master key and signing key written to {} (mode 0600)",
        tmp.path().display()
    );

    let (vault, addr, platform_key) = start_vault(&socket, &owner)?;
    say!(
        "2. started a vault in the simulated TEE (INSECURE, for development) for owner {}…: \
         TLS on {addr}, engine socket {}",
        &owner[..16],
        socket.display()
    );
    say!("   vault status: {}", crate::provision::status(&addr)?);

    // The owner pins the vault's measurement: in the simulation, the SHA-384 of this binary.
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let binary = std::fs::read(&exe).map_err(|e| fail(format!("{}: {e}", exe.display())))?;
    let measurement = hex::encode(sealdb_attest::sim::measure(&binary));
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "allow_insecure_simulation = true\n[measurements]\nsim_measurement = [\"{measurement}\"]\n"
        ),
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut args = crate::provision::ProvisionArgs::new(&addr, key_file.clone(), owner_key, policy);
    args.pin_sim_platform(&platform_key);
    let claims = crate::provision::provision(&args)?;
    say!(
        "3. attested provisioning: evidence {:?}, measurement {}…, report_data bound to this \
         TLS session; key sent, key-check value verified",
        claims.format,
        &measurement[..16]
    );
    say!("   vault status: {}", crate::provision::status(&addr)?);

    let vault_opts = || -> Result<Options, Failure> {
        let provider = VaultKeyProvider::connect(&socket)?;
        Ok(Options {
            key_provider: Some(Arc::new(provider)),
            ..Options::default()
        })
    };
    let db = Db::open(&dir, vault_opts()?)?;
    say!(
        "4. created an encrypted store (AES-256-GCM) in {}; its data keys are wrapped by the \
         vault, the master key never enters this process",
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
    say!("5. wrote 3 keys in a transaction and 10000 keys in a write batch");

    let v = db
        .get(b"user/1/name")?
        .ok_or_else(|| fail("user/1/name missing"))?;
    say!("6. read user/1/name = {}", String::from_utf8_lossy(&v));
    say_inline!("   scan prefix user/:");
    for kv in db.iter(IterOptions::prefix(b"user/"))? {
        let kv = kv?;
        say_inline!(
            " {}={}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    say!();
    let new_key = db.rotate_data_key()?;
    db.update(|txn| txn.set(b"user/3/name", b"Katherine Johnson"))?;
    let status = db.encryption_status()?;
    say!(
        "7. rotated the data key (new key {new_key}, wrapped by the vault); keys: {}",
        status
            .keys
            .iter()
            .map(|k| format!("{}={:?}", k.id, k.state))
            .collect::<Vec<_>>()
            .join(", ")
    );
    db.close()?;
    say!("8. closed the store (memtable flushed to an encrypted table)");

    let marker = b"Grace Hopper";
    for entry in std::fs::read_dir(&dir).map_err(|e| fail(e.to_string()))? {
        let path = entry.map_err(|e| fail(e.to_string()))?.path();
        let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        if bytes.windows(marker.len()).any(|w| w == marker) {
            return Err(fail(format!("plaintext found in {}", path.display())));
        }
    }
    say!("9. searched every file in the store for \"Grace Hopper\": not found on disk");

    match Db::open(&dir, Options::default().with_key_file(&wrong_key)?) {
        Err(e) => say!("10. opening with a wrong master key is refused: {e}"),
        Ok(_) => return Err(fail("the wrong key was accepted")),
    }

    let report = sealdb::verify_store(&dir, &vault_opts()?)?;
    say!(
        "11. verify through the vault: {} tables, {} entries, {} WAL records authenticated",
        report.tables,
        report.entries,
        report.wal_records
    );

    let db = Db::open(&dir, vault_opts()?)?;
    let n = db.iter(IterOptions::prefix(b"log/"))?.count();
    say!(
        "12. reopened through the vault: {n} log entries, motto = {}",
        String::from_utf8_lossy(&db.get(b"config/motto")?.unwrap_or_default())
    );
    say!("\nstore info:");
    crate::print_info(&db.info()?, false);
    db.close()?;

    drop(vault);
    let without_vault = vault_opts().and_then(|o| Ok(Db::open(&dir, o)?));
    match without_vault {
        Err(Failure(e, _)) => say!("\n13. vault stopped: the store cannot be opened ({e})"),
        Ok(_) => return Err(fail("the store opened without its vault")),
    }
    Ok(())
}

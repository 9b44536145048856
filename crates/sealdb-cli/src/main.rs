//! `sealdb`: create, inspect, verify and benchmark sealdb stores.

/// `println!` that treats a closed stdout (`sealdb … | head`) as the end of output, not a
/// panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` counterpart of `say!`.
macro_rules! say_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod attest;
mod bench;
mod demo;
mod provision;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sealdb::{Db, IterOptions, Options};

#[derive(Parser)]
#[command(
    name = "sealdb",
    version,
    about = "An embedded key-value store encrypted at rest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// The store directory.
    #[arg(long)]
    dir: PathBuf,
    /// Master key file (32 raw bytes or 64 hex digits) of an encrypted store (key mode
    /// `host`).
    #[arg(long, conflicts_with = "vault_socket")]
    key_file: Option<PathBuf>,
    /// The vault's engine socket (key mode `vault`: the master key stays in the vault).
    #[arg(long)]
    vault_socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new store (encrypted when a key file is given).
    Init {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a new random 32-byte master key file (mode 0600).
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Set a key.
    Put {
        #[command(flatten)]
        store: StoreArgs,
        /// Key and value are hex.
        #[arg(long)]
        hex: bool,
        key: String,
        value: String,
    },
    /// Print a key's value ("not found" on stderr and exit 1 when absent).
    Get {
        #[command(flatten)]
        store: StoreArgs,
        /// Key is hex; the value is printed as hex.
        #[arg(long)]
        hex: bool,
        key: String,
    },
    /// Delete a key.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// Key is hex.
        #[arg(long)]
        hex: bool,
        key: String,
    },
    /// Bulk-load `key<TAB>value` lines.
    Load {
        #[command(flatten)]
        store: StoreArgs,
        /// The TSV file ("-" for standard input).
        #[arg(long)]
        tsv: PathBuf,
        /// Keys and values are hex.
        #[arg(long)]
        hex: bool,
    },
    /// Print `key<TAB>value` lines.
    Scan {
        #[command(flatten)]
        store: StoreArgs,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Largest key first.
        #[arg(long)]
        reverse: bool,
        /// Print (and take the prefix) as hex.
        #[arg(long)]
        hex: bool,
    },
    /// Read and authenticate every unit of every file; exit 1 on any integrity failure.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Levels, tables, sizes and key ids in use.
    Info {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create a new data key; new files are written under it (same as `keys rotate`).
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Garbage-collect the value log until no file has at least RATIO unreachable bytes.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Share of a file that must be unreachable for it to be collected.
        #[arg(long, default_value_t = 0.5)]
        ratio: f64,
    },
    /// Compact every level into one (drops every version no snapshot needs).
    Flatten {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Attestation evidence.
    Attest {
        #[command(subcommand)]
        command: attest::AttestCommand,
    },
    /// Print the public key of an owner signing key file (for `vault serve --owner`).
    OwnerPubkey {
        /// The owner's signing key file (make one with `sealdb keygen`).
        #[arg(long)]
        owner_key: PathBuf,
    },
    /// Verify a vault's attestation over TLS, then give it the master key (owner side).
    Provision(provision::ProvisionArgs),
    /// The vault: run one, or ask one for its state.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Data keys: list, rotate, rekey, rotate the master key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The end-to-end demonstration in a temporary directory.
    Demo,
    /// Run the shared benchmark workload (DESIGN.md section 10).
    Bench(bench::BenchArgs),
    /// Time an online master-key rotation with many data keys under a write load.
    BenchMaster(bench::MasterBenchArgs),
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Run a vault in the foreground: prints its address, then serves provisioning over TLS.
    Serve {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: String,
        /// The TEE: `sim` (insecure simulation), `gramine` (SGX under Gramine) or `tsm` (TDX
        /// or SEV-SNP confidential VM through configfs-tsm).
        #[arg(long)]
        tee: String,
        /// The TEE's directory: Gramine's attestation files (default `/dev/attestation`) or
        /// the configfs-tsm report directory (default `/sys/kernel/config/tsm/report`).
        #[arg(long)]
        tee_dir: Option<String>,
        /// The engine's local socket (owner-only), for stores opened with --vault-socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The owner's public key (64 hex digits, from `sealdb owner-pubkey`): the only key
        /// whose signature provisions this vault.
        #[arg(long)]
        owner: String,
    },
    /// Ask a vault for its state (not attested: for operators, not for trust decisions).
    Status {
        /// The vault's address (HOST:PORT).
        #[arg(long)]
        vault: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Per key: id, created, state, units sealed, live files, live bytes.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create a new active data key.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Rewrite every live file whose key is older than --max-age seconds, and wait for it.
    Rekey {
        #[command(flatten)]
        store: StoreArgs,
        /// Maximum key age in seconds (default 0: everything under the active key).
        #[arg(long, default_value_t = 0)]
        max_age: u64,
    },
    /// Re-wrap every data key under a new master key (no data file is rewritten).
    RotateMaster {
        #[command(flatten)]
        store: StoreArgs,
        /// The new master key file (key mode `host` after the rotation).
        #[arg(long, required_unless_present = "new_vault_socket")]
        new_key_file: Option<PathBuf>,
        /// The engine socket of a vault provisioned with the new master key (key mode
        /// `vault` after the rotation; moves a `host` store into a vault).
        #[arg(long, conflicts_with = "new_key_file")]
        new_vault_socket: Option<PathBuf>,
    },
}

/// An error for the user: message and exit code.
struct Failure(String, u8);

impl From<sealdb::Error> for Failure {
    fn from(e: sealdb::Error) -> Self {
        Failure(format!("error: {e}"), 1)
    }
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure(format!("error: {}", msg.into()), 1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn options(store: &StoreArgs, create: bool) -> Result<Options, Failure> {
    let mut opts = Options {
        create_if_missing: create,
        ..Options::default()
    };
    if let Some(k) = &store.key_file {
        opts = opts.with_key_file(k)?;
    }
    if let Some(sock) = &store.vault_socket {
        let provider = sealdb_vault_client::VaultKeyProvider::connect(sock)?;
        opts.key_provider = Some(std::sync::Arc::new(provider));
    }
    Ok(opts)
}

fn open(store: &StoreArgs) -> Result<Db, Failure> {
    Ok(Db::open(&store.dir, options(store, false)?)?)
}

fn bytes_arg(s: &str, hex: bool, what: &str) -> Result<Vec<u8>, Failure> {
    if hex {
        hex::decode(s).map_err(|e| fail(format!("{what} is not valid hex: {e}")))
    } else {
        Ok(s.as_bytes().to_vec())
    }
}

fn show(b: &[u8], hex: bool) -> String {
    if hex {
        hex::encode(b)
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

fn run(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Init { store } => {
            if store.dir.join("MANIFEST").exists() {
                return Err(fail(format!(
                    "a store already exists in {}",
                    store.dir.display()
                )));
            }
            let db = Db::open(&store.dir, options(&store, true)?)?;
            let enc = db.info()?.encrypted;
            db.close()?;
            say!(
                "created {} store in {}",
                if enc { "encrypted" } else { "unencrypted" },
                store.dir.display()
            );
        }
        Command::Keygen { out } => {
            keygen(&out)?;
            say!(
                "wrote a new 32-byte master key to {} (mode 0600)",
                out.display()
            );
        }
        Command::Put {
            store,
            hex,
            key,
            value,
        } => {
            let db = open(&store)?;
            db.put(
                &bytes_arg(&key, hex, "key")?,
                &bytes_arg(&value, hex, "value")?,
            )?;
            db.close()?;
        }
        Command::Get { store, hex, key } => {
            let db = open(&store)?;
            match db.get(&bytes_arg(&key, hex, "key")?)? {
                Some(v) => say!("{}", show(&v, hex)),
                None => return Err(Failure("not found".into(), 1)),
            }
        }
        Command::Delete { store, hex, key } => {
            let db = open(&store)?;
            db.delete(&bytes_arg(&key, hex, "key")?)?;
            db.close()?;
        }
        Command::Load { store, tsv, hex } => {
            let db = open(&store)?;
            let n = load(&db, &tsv, hex)?;
            db.close()?;
            say!("loaded {n} entries");
        }
        Command::Scan {
            store,
            prefix,
            reverse,
            hex,
        } => {
            let db = open(&store)?;
            let opts = IterOptions {
                prefix: prefix.map(|p| bytes_arg(&p, hex, "prefix")).transpose()?,
                reverse,
                ..Default::default()
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for kv in db.iter(opts)? {
                let kv = kv?;
                let r = writeln!(out, "{}\t{}", show(&kv.key, hex), show(&kv.value, hex));
                if r.is_err() {
                    break; // closed pipe (e.g. `| head`)
                }
            }
            let _ = out.flush();
        }
        Command::Verify { store } => {
            let report = sealdb::verify_store(&store.dir, &options(&store, false)?)?;
            say!(
                "ok: {} tables ({} bytes, {} entries) and {} WAL files ({} records) authenticated",
                report.tables,
                report.bytes,
                report.entries,
                report.wal_files,
                report.wal_records
            );
        }
        Command::Info { store, json } => {
            let db = open(&store)?;
            let info = db.info()?;
            let status = db.encryption_status()?;
            print_info(&info, json);
            if !json && status.encrypted {
                print_key_shares(&status);
            }
        }
        Command::Rotate { store } => {
            let db = open(&store)?;
            let id = db.rotate_data_key()?;
            db.close()?;
            say!("new active data key: {id}");
        }
        Command::Keys { command } => keys(command)?,
        Command::Attest { command } => attest::run(command)?,
        Command::OwnerPubkey { owner_key } => {
            let key = provision::read_owner_key(&owner_key)?;
            say!("{}", hex::encode(key.public_key()));
        }
        Command::Provision(args) => {
            let claims = provision::provision(&args)?;
            say!(
                "{}",
                serde_json::to_string_pretty(&claims).expect("JSON of plain values")
            );
            say!("provisioned: the vault holds the master key (key-check value verified)");
        }
        Command::Vault { command } => match command {
            VaultCommand::Serve {
                listen,
                tee,
                tee_dir,
                socket,
                owner,
            } => {
                let owner = sealdb_vault::parse_owner(&owner).map_err(|e| fail(e.to_string()))?;
                let tee = sealdb_vault::tee_by_name(&tee, tee_dir.as_deref())
                    .map_err(|e| fail(e.to_string()))?;
                let vault = std::sync::Arc::new(sealdb_vault::Vault::new(tee, owner));
                sealdb_vault::serve(&listen, socket.as_deref(), vault)
                    .map_err(|e| fail(e.to_string()))?;
            }
            VaultCommand::Status { vault } => say!("{}", provision::status(&vault)?),
        },
        Command::Gc { store, ratio } => {
            let db = open(&store)?;
            let mut total = sealdb::GcReport::default();
            loop {
                let r = db.run_value_log_gc(ratio)?;
                total.files_deleted += r.files_deleted;
                if r.files_collected == 0 {
                    break;
                }
                total.files_collected += r.files_collected;
                total.entries_rewritten += r.entries_rewritten;
                total.bytes_rewritten += r.bytes_rewritten;
            }
            db.close()?;
            say!(
                "collected {} value-log files: {} live entries ({} bytes) rewritten",
                total.files_collected,
                total.entries_rewritten,
                total.bytes_rewritten
            );
        }
        Command::Flatten { store } => {
            let db = open(&store)?;
            db.flatten()?;
            db.close()?;
            say!("flattened");
        }
        Command::Demo => demo::run()?,
        Command::Bench(args) => bench::run(&args)?,
        Command::BenchMaster(args) => bench::run_master(&args)?,
    }
    Ok(())
}

fn keys(cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::List { store, json } => {
            let db = open(&store)?;
            let status = db.encryption_status()?;
            print_keys(&status, json);
            db.close()?;
        }
        KeysCommand::Rotate { store } => {
            let db = open(&store)?;
            let id = db.rotate_data_key()?;
            db.close()?;
            say!("new active data key: {id}");
        }
        KeysCommand::Rekey { store, max_age } => {
            let db = open(&store)?;
            let t = std::time::Instant::now();
            let r = db.rekey(std::time::Duration::from_secs(max_age))?;
            db.close()?;
            say!(
                "rekeyed: {} rewrite tasks, {} bytes rewritten in {:.2}s; keys in use: {:?}",
                r.tasks,
                r.bytes_rewritten,
                t.elapsed().as_secs_f64(),
                r.keys_in_use
            );
        }
        KeysCommand::RotateMaster {
            store,
            new_key_file,
            new_vault_socket,
        } => {
            if store.key_file.is_none() && store.vault_socket.is_none() {
                return Err(fail(
                    "the current master key is required (--key-file or --vault-socket)",
                ));
            }
            let (new, what): (std::sync::Arc<dyn sealdb::KeyProvider>, String) =
                match (&new_key_file, &new_vault_socket) {
                    (Some(f), _) => (
                        std::sync::Arc::new(sealdb::HostKeyProvider::from_key_file(f)?),
                        f.display().to_string(),
                    ),
                    (None, Some(sock)) => (
                        std::sync::Arc::new(sealdb_vault_client::VaultKeyProvider::connect(sock)?),
                        format!("the vault at {}", sock.display()),
                    ),
                    (None, None) => {
                        return Err(fail("--new-key-file or --new-vault-socket is required"))
                    }
                };
            let db = open(&store)?;
            let t = std::time::Instant::now();
            db.rotate_master_key(new)?;
            let took = t.elapsed();
            db.close()?;
            say!(
                "master key rotated in {:.1} ms; only {what} opens the store now",
                took.as_secs_f64() * 1000.0,
            );
        }
    }
    Ok(())
}

fn print_keys(status: &sealdb::EncryptionStatus, json: bool) {
    if json {
        let keys: Vec<serde_json::Value> = status
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id, "created": k.created, "state": k.state.as_str(),
                    "retired_at": k.retired_at, "units_sealed": k.units_sealed,
                    "live_files": k.live_files, "live_bytes": k.live_table_bytes,
                })
            })
            .collect();
        let v = serde_json::json!({
            "encrypted": status.encrypted,
            "active_key_id": status.active_key_id,
            "oldest_key_in_use_age_secs": status.oldest_key_in_use_age_secs,
            "keys": keys,
        });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON of plain values")
        );
        return;
    }
    say!("   id      created  state      units sealed  live files   live bytes");
    for k in &status.keys {
        say!(
            "{:>5} {:>12}  {:<9} {:>13} {:>11} {:>12}",
            k.id,
            k.created,
            k.state.as_str(),
            k.units_sealed,
            k.live_files,
            k.live_table_bytes
        );
    }
}

fn keygen(out: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = sealdb_crypto::SecretKey::generate().map_err(|e| fail(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| fail(format!("cannot create key file {}: {e}", out.display())))?;
    f.write_all(key.danger_export())
        .and_then(|_| f.sync_all())
        .map_err(|e| fail(format!("cannot write key file {}: {e}", out.display())))
}

fn load(db: &Db, tsv: &Path, hex: bool) -> Result<u64, Failure> {
    let reader: Box<dyn BufRead> = if tsv == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(tsv)
            .map_err(|e| fail(format!("cannot open {}: {e}", tsv.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut batch = db.write_batch();
    let mut n = 0u64;
    for (i, line) in reader.split(b'\n').enumerate() {
        let mut line = line.map_err(|e| fail(format!("{}: read error: {e}", tsv.display())))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let lineno = i + 1;
        let tab = line.iter().position(|b| *b == b'\t').ok_or_else(|| {
            fail(format!(
                "{}:{lineno}: expected key<TAB>value",
                tsv.display()
            ))
        })?;
        let (k, v) = (&line[..tab], &line[tab + 1..]);
        let (k, v) = if hex {
            let d = |s: &[u8], what| {
                hex::decode(s).map_err(|e| {
                    fail(format!(
                        "{}:{lineno}: {what} is not valid hex: {e}",
                        tsv.display()
                    ))
                })
            };
            (d(k, "key")?, d(v, "value")?)
        } else {
            (k.to_vec(), v.to_vec())
        };
        batch
            .put(&k, &v)
            .map_err(|e| fail(format!("{}:{lineno}: {e}", tsv.display())))?;
        n += 1;
    }
    batch.commit()?;
    Ok(n)
}

fn print_key_shares(status: &sealdb::EncryptionStatus) {
    let total: u64 = status.keys.iter().map(|k| k.live_table_bytes).sum();
    for k in status.keys.iter().filter(|k| k.live_files > 0) {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * k.live_table_bytes as f64 / total as f64
        };
        say!(
            "key {:>3}: {:5.1}% of live table bytes, {} live files",
            k.id,
            share,
            k.live_files
        );
    }
    if let Some(age) = status.oldest_key_in_use_age_secs {
        say!("oldest key in use: {age} s old");
    }
}

fn print_info(info: &sealdb::StoreInfo, json: bool) {
    let key_ids: Vec<serde_json::Value> = info
        .keys
        .iter()
        .map(|k| serde_json::json!({"id": k.id, "created": k.created, "state": k.state.as_str()}))
        .collect();
    if json {
        let v = serde_json::json!({
            "location": info.location,
            "encrypted": info.encrypted,
            "active_key_id": info.active_key_id,
            "key_ids_in_use": info.key_ids_in_use,
            "keys": key_ids,
            "levels": info.levels.iter().map(|l| serde_json::json!({
                "level": l.level, "tables": l.tables, "bytes": l.bytes, "entries": l.entries})).collect::<Vec<_>>(),
            "tables": info.tables.iter().map(|t| serde_json::json!({
                "file": t.file, "level": t.level, "bytes": t.bytes, "entries": t.entries, "key_id": t.key_id})).collect::<Vec<_>>(),
            "memtables": info.memtables,
            "memtable_bytes": info.memtable_bytes,
            "wal_files": info.wal_files,
            "block_cache_bytes": info.block_cache_bytes,
            "pinned_index_filter_bytes": info.pinned_index_filter_bytes,
            "last_commit_ts": info.last_commit_ts,
            "discarded_wal_tails": info.discarded_wal_tails,
            "value_log_files": info.value_log_files.iter().map(|f| serde_json::json!({
                "file": f.file, "bytes": f.bytes, "discardable_bytes": f.discardable_bytes,
                "key_ids": f.key_ids})).collect::<Vec<_>>(),
        });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON of plain values")
        );
        return;
    }
    say!("store:      {}", info.location.display());
    say!(
        "encryption: {}",
        if info.encrypted {
            format!("AES-256-GCM, active data key {}", info.active_key_id)
        } else {
            "none".to_string()
        }
    );
    for k in &info.keys {
        say!(
            "  key {:>3}  created {}  {}",
            k.id,
            k.created,
            k.state.as_str()
        );
    }
    say!("key ids in use by tables: {:?}", info.key_ids_in_use);
    say!("level  tables        bytes      entries");
    for l in info.levels.iter().filter(|l| l.tables > 0) {
        say!(
            "L{:<5} {:>6} {:>12} {:>12}",
            l.level,
            l.tables,
            l.bytes,
            l.entries
        );
    }
    say!(
        "memtables: {} ({} bytes), WAL files: {}",
        info.memtables,
        info.memtable_bytes,
        info.wal_files.join(", ")
    );
    say!(
        "memory: block cache {} bytes, pinned index+filter {} bytes",
        info.block_cache_bytes,
        info.pinned_index_filter_bytes
    );
    say!("last commit timestamp: {}", info.last_commit_ts);
    let vbytes: u64 = info.value_log_files.iter().map(|f| f.bytes).sum();
    let vdiscard: u64 = info
        .value_log_files
        .iter()
        .map(|f| f.discardable_bytes)
        .sum();
    say!(
        "value log: {} files, {} bytes, {} discardable",
        info.value_log_files.len(),
        vbytes,
        vdiscard
    );
    for f in &info.value_log_files {
        say!(
            "  {}  {} bytes  {} discardable  keys {:?}",
            f.file,
            f.bytes,
            f.discardable_bytes,
            f.key_ids
        );
    }
    for t in &info.discarded_wal_tails {
        say!("discarded at open (torn WAL tail): {t}");
    }
}

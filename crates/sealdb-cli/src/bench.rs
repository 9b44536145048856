//! `sealdb bench`: the shared workload of DESIGN.md section 10, printed in the peers' format.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sealdb::{Db, HostKeyProvider, IterOptions, Options};

use crate::{fail, Failure};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Store directory (wiped first).
    #[arg(long)]
    dir: PathBuf,
    /// Number of keys.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Random point reads.
    #[arg(long, default_value_t = 200_000)]
    reads: u64,
    /// `none`, `host`, or `vault` (with --vault-socket: a provisioned vault's engine socket).
    #[arg(long, default_value = "host")]
    encryption: String,
    /// The vault's engine socket, for `--encryption vault`.
    #[arg(long)]
    vault_socket: Option<PathBuf>,
    /// Keys per batch.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Rotate the data key every this many seconds during the run (host mode).
    #[arg(long)]
    key_rotation_secs: Option<u64>,
}

#[derive(clap::Args)]
pub(crate) struct MasterBenchArgs {
    /// Store directory (wiped first).
    #[arg(long)]
    dir: PathBuf,
    /// Data keys in the registry when the master key is rotated.
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Writer threads running during the rotation.
    #[arg(long, default_value_t = 2)]
    writers: u32,
}

/// Online master-key rotation with many data keys, under a write load: how long it takes
/// and the longest a single write waited meanwhile.
pub(crate) fn run_master(a: &MasterBenchArgs) -> Result<(), Failure> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _ = std::fs::remove_dir_all(&a.dir);
    let master = sealdb_crypto::SecretKey::generate().map_err(|e| fail(e.to_string()))?;
    let opts = Options {
        key_provider: Some(Arc::new(HostKeyProvider::new(&master))),
        ..Options::default()
    };
    let db = Db::open(&a.dir, opts)?;
    let t = Instant::now();
    for _ in 1..a.keys {
        db.rotate_data_key()?;
    }
    let setup = t.elapsed().as_secs_f64();
    let stop = AtomicBool::new(false);
    // Longest single put before the rotation starts, and while it runs (plus 50 ms after).
    let max_before = AtomicU64::new(0);
    let max_ns = AtomicU64::new(0);
    let rotating = AtomicBool::new(false);
    let puts = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let mut took = 0.0;
    std::thread::scope(|s| {
        for w in 0..a.writers {
            let (db, stop, max_ns, puts, failed) = (&db, &stop, &max_ns, &puts, &failed);
            let (max_before, rotating) = (&max_before, &rotating);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("w{w}-{i}");
                    let t = Instant::now();
                    if db.put(k.as_bytes(), b"value").is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let ns = t.elapsed().as_nanos() as u64;
                    if rotating.load(Ordering::Relaxed) {
                        max_ns.fetch_max(ns, Ordering::Relaxed);
                    } else {
                        max_before.fetch_max(ns, Ordering::Relaxed);
                    }
                    puts.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let new = sealdb_crypto::SecretKey::generate().expect("system RNG");
        rotating.store(true, Ordering::Relaxed);
        let t = Instant::now();
        let r = db.rotate_master_key(Arc::new(HostKeyProvider::new(&new)));
        took = t.elapsed().as_secs_f64();
        if r.is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
    });
    db.close()?;
    say!(
        "engine=sealdb keys={} setup_s={:.1} master_rotation_ms={:.1} max_put_ms_before={:.2} max_put_ms_during={:.2} puts={} failed={}",
        a.keys,
        setup,
        took * 1000.0,
        max_before.load(Ordering::Relaxed) as f64 / 1e6,
        max_ns.load(Ordering::Relaxed) as f64 / 1e6,
        puts.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// xorshift64*: a fixed, dependency-free sequence of read positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Resident set size in KiB (Linux), for `SEALDB_BENCH_RSS=1`.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn phase(name: &str) {
    if std::env::var_os("SEALDB_BENCH_RSS").is_some() {
        eprintln!("rss after {name}: {} MiB", rss_kib() / 1024);
    }
}

pub(crate) fn run(a: &BenchArgs) -> Result<(), Failure> {
    let provider: Option<Arc<dyn sealdb::KeyProvider>> = match a.encryption.as_str() {
        "none" => None,
        "host" => {
            let master = sealdb_crypto::SecretKey::generate().map_err(|e| fail(e.to_string()))?;
            Some(Arc::new(HostKeyProvider::new(&master)))
        }
        "vault" => {
            let socket = a
                .vault_socket
                .as_ref()
                .ok_or_else(|| fail("--encryption vault needs --vault-socket"))?;
            Some(Arc::new(sealdb_vault_client::VaultKeyProvider::connect(
                socket,
            )?))
        }
        other => {
            return Err(fail(format!(
                "--encryption must be none, host or vault, not {other}"
            )))
        }
    };
    if a.n == 0 || a.batch == 0 {
        return Err(fail("--n and --batch must be positive"));
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    let opts = Options {
        key_provider: provider,
        key_rotation_interval: a.key_rotation_secs.map(std::time::Duration::from_secs),
        ..Options::default()
    };
    let mut value = vec![0u8; a.value_size];
    sealdb_crypto::fill_random(&mut value).map_err(|e| fail(e.to_string()))?;

    let t = Instant::now();
    let db = Db::open(&a.dir, opts.clone())?;
    let mut i = 0;
    while i < a.n {
        let mut b = db.write_batch();
        for j in i..(i + a.batch).min(a.n) {
            b.put(&key(j), &value)?;
        }
        b.commit()?;
        i += a.batch;
    }
    phase("fill writes");
    if a.key_rotation_secs.is_some() {
        let keys = db.encryption_status()?.keys.len();
        eprintln!("data keys used during the fill: {keys}");
    }
    db.close()?;
    let fill = t.elapsed().as_secs_f64();
    phase("fill close");

    let db = Db::open(&a.dir, opts)?;
    let mut rng = Rng(42);
    let t = Instant::now();
    db.view(|txn| {
        for _ in 0..a.reads {
            let k = key(rng.next() % a.n);
            if txn.get(&k)?.is_none() {
                return Err(sealdb::Error::InvalidArgument("a loaded key is missing"));
            }
        }
        Ok(())
    })?;
    let read = t.elapsed().as_secs_f64();
    phase("reads");

    let t = Instant::now();
    let mut scanned = 0u64;
    let bulk = IterOptions {
        fill_cache: false,
        ..IterOptions::default()
    };
    for kv in db.iter(bulk)? {
        scanned += u64::from(kv?.value.len() == a.value_size);
    }
    let scan = t.elapsed().as_secs_f64();
    phase("scan");
    db.close()?;
    if scanned != a.n {
        return Err(fail(format!(
            "scan returned {scanned} entries, expected {}",
            a.n
        )));
    }
    say!(
        "engine=sealdb enc={} n={} vsz={} fill_ops_s={:.0} read_ops_s={:.0} scan_ops_s={:.0} scanned={}",
        a.encryption,
        a.n,
        a.value_size,
        a.n as f64 / fill,
        a.reads as f64 / read,
        scanned as f64 / scan,
        scanned
    );
    Ok(())
}

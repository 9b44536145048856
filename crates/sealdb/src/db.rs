//! The database: opening and recovery, the commit path, point reads, background flush and
//! compaction, info and verification.
//!
//! Lock order (never taken in the other order): `commit` → `edit` → `sv`.
//! - `commit` serializes commits: conflict check, timestamp, WAL append, memtable insert.
//! - `edit` serializes changes to the tree (flush and compaction installs, manifest writes).
//! - `sv` guards the current [`SuperVersion`]; readers hold it only to clone an `Arc`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::compaction::{self, Policy, Task};
use crate::entry::{Kind, Record};
use crate::fs::{StdStorage, Storage};
use crate::iter::{MemSource, Merge, RunSource, Source, VecSource};
use crate::keys::{now_secs, KeyPolicy, KeyProvider, KeyRing, StoreId, REGISTRY_FILE};
use crate::memtable::Memtable;
use crate::mvcc::{fingerprint, Oracle};
use crate::table::{self, BlockCache, Table, TableBuilder, TableMeta};
use crate::version::{self, ManifestState, Version, MANIFEST, NUM_LEVELS};
use crate::vlog::{self, Pointer, ValueLog, VlogFile, VlogWriter};
use crate::wal::{self, WalWriter};
use crate::{Error, Result};

/// Largest key accepted (bytes).
pub const MAX_KEY_SIZE: usize = 65_535;
/// Units sealed under one data key before it must rotate: 2^32 − 2^28, leaving room for the
/// units a table build in progress seals after the limit is seen.
pub const MAX_UNITS_PER_KEY: u64 = (1 << 32) - (1 << 28);
/// Largest value accepted (bytes).
pub const MAX_VALUE_SIZE: usize = 256 << 20;

/// How to open a store. `Options::default()` gives an unencrypted store with Badger-like
/// budgets; see each field for its memory cost.
#[derive(Clone)]
pub struct Options {
    /// Create the store if the directory holds none (default: true).
    pub create_if_missing: bool,
    /// Fsync the WAL on every commit (default: false; a commit is then durable once the
    /// OS writes it back, and survives a process crash but not a machine crash).
    pub sync_writes: bool,
    /// Size at which the active memtable is frozen and a new one started (default 64 MiB).
    pub memtable_size: usize,
    /// Frozen memtables allowed before writers stall (default 2). Memtable memory is bounded
    /// by `memtable_size × (1 + max_immutable_memtables)`.
    pub max_immutable_memtables: usize,
    /// Target plaintext size of a table data block (default 4 KiB).
    pub block_size: usize,
    /// Budget of the decrypted block cache (default 256 MiB).
    pub block_cache_size: usize,
    /// Bloom filter bits per key (default 10, about 1% false positives).
    pub bloom_bits_per_key: usize,
    /// L0 tables that trigger a compaction into L1 (default 4).
    pub level0_compaction_trigger: usize,
    /// L0 tables at which writers stall until compaction catches up (default 12).
    pub level0_stall: usize,
    /// Size budget of L1 (default 256 MiB); each deeper level is `level_size_multiplier`
    /// times larger.
    pub base_level_size: u64,
    /// Growth factor between levels (default 10).
    pub level_size_multiplier: u64,
    /// Target size of tables written by compaction (default 64 MiB).
    pub target_file_size: u64,
    /// Run flush and compaction threads (default true). Without them, writes stall once the
    /// frozen memtables are full: use only for tests that drive the tree by hand.
    pub background_threads: bool,
    /// The key provider; `None` opens an unencrypted store.
    pub key_provider: Option<Arc<dyn KeyProvider>>,
    /// Rotate the active data key once it is this old (default: none; whole seconds).
    pub key_rotation_interval: Option<std::time::Duration>,
    /// Rotate the active data key before it has sealed this many units (default and
    /// maximum 2^32 − 2^28, within NIST's 2^32 limit for random 96-bit nonces).
    pub max_units_per_key: u64,
    /// Rewrite tables (in the background, after regular compactions) whose data key is older
    /// than this, so the oldest key protecting live data is bounded (default: none).
    pub max_key_age: Option<std::time::Duration>,
    /// How long a data key no live file uses is kept before its wrapped material is
    /// destroyed (default 1 day).
    pub retired_key_retention: std::time::Duration,
    /// Values of at least this many bytes go to the value log; the tree holds a 20-byte
    /// pointer (default 1 KiB).
    pub value_threshold: usize,
    /// Size at which a value-log file is closed and a new one started (default 128 MiB).
    pub value_log_file_size: u64,
    /// The background thread garbage-collects a value-log file once this share of it is
    /// unreachable (default 0.5; `None` turns background GC off).
    pub value_log_gc_ratio: Option<f64>,
    /// The storage backend; `None` uses real files in the directory given to [`Db::open`].
    pub storage: Option<Arc<dyn Storage>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: true,
            sync_writes: false,
            memtable_size: 64 << 20,
            max_immutable_memtables: 2,
            block_size: 4096,
            block_cache_size: 256 << 20,
            bloom_bits_per_key: 10,
            level0_compaction_trigger: 4,
            level0_stall: 12,
            base_level_size: 256 << 20,
            level_size_multiplier: 10,
            target_file_size: 64 << 20,
            background_threads: true,
            key_provider: None,
            key_rotation_interval: None,
            max_units_per_key: MAX_UNITS_PER_KEY,
            max_key_age: None,
            retired_key_retention: std::time::Duration::from_secs(86_400),
            value_threshold: 1024,
            value_log_file_size: 128 << 20,
            value_log_gc_ratio: Some(0.5),
            storage: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("sync_writes", &self.sync_writes)
            .field("memtable_size", &self.memtable_size)
            .field("block_cache_size", &self.block_cache_size)
            .field("encrypted", &self.key_provider.is_some())
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Uses a host-mode master key read from `path` (32 raw bytes or 64 hex digits).
    pub fn with_key_file(mut self, path: &Path) -> Result<Self> {
        self.key_provider = Some(Arc::new(crate::keys::HostKeyProvider::from_key_file(path)?));
        Ok(self)
    }
}

/// How long key upkeep waits after the key provider failed, so commits do not each wait
/// for an unreachable vault.
const UPKEEP_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// The readable state: active memtable, frozen memtables (oldest first) and tables.
pub(crate) struct SuperVersion {
    pub(crate) mem: Arc<Memtable>,
    pub(crate) imms: Vec<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
}

struct CommitState {
    wal: WalWriter,
    /// Logs of frozen memtables not yet fsynced. A sync request fsyncs them first, so an
    /// acknowledged sync implies every earlier commit is durable.
    frozen_unsynced: Vec<WalWriter>,
    /// The value-log file large values are appended to (created on the first one).
    vlog: Option<VlogWriter>,
}

impl CommitState {
    /// Makes every commit so far durable.
    fn sync_all(&mut self, vlog: &ValueLog, storage: &dyn Storage) -> Result<()> {
        // Values first: a durable log chunk must never point at a value that is not.
        vlog.sync_written(storage)?;
        self.sync_frozen()?;
        self.wal.sync()
    }

    fn sync_frozen(&mut self) -> Result<()> {
        while let Some(mut w) = self.frozen_unsynced.pop() {
            w.sync()?;
        }
        Ok(())
    }
}

struct EditState {
    manifest: ManifestState,
    /// Key id the manifest file is sealed under.
    manifest_key_id: u32,
}

#[derive(Default)]
struct BgState {
    closing: bool,
    flush_busy: bool,
    compaction_busy: bool,
}

pub(crate) struct Inner {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) keys: KeyRing,
    pub(crate) opts: Options,
    cache: Arc<BlockCache>,
    sv: RwLock<Arc<SuperVersion>>,
    commit: Mutex<CommitState>,
    edit: Mutex<EditState>,
    pub(crate) oracle: Arc<Oracle>,
    bg: Mutex<BgState>,
    bg_cv: Condvar,
    next_file_no: AtomicU64,
    poisoned: AtomicBool,
    closed: AtomicBool,
    /// Set when close begins: compactions stop early.
    closing: AtomicBool,
    /// The first error of a background flush or compaction.
    bg_error: Mutex<Option<Error>>,
    /// Serialize flushes, compactions and value-log GC (each may also run from a caller's
    /// thread).
    flush_mutex: Mutex<()>,
    compact_mutex: Mutex<()>,
    gc_mutex: Mutex<()>,
    /// Number of the value-log file being appended to (0: none yet).
    active_vlog: AtomicU64,
    /// WAL tails discarded at open (torn writes): file, offset, bytes.
    discarded_tails: Vec<(String, u64, u64)>,
    pub(crate) vlog: ValueLog,
    /// Garbage-collected value-log files and the commit timestamp of their rewrite: deleted
    /// once no snapshot reads below it.
    vlog_pending_delete: Mutex<Vec<(u64, u64)>>,
    stall_count: AtomicU64,
    compactions: AtomicU64,
    _lock: Option<std::fs::File>,
}

/// An open store. Cheap to share across threads (`&Db` is `Sync`); close with [`Db::close`]
/// or by dropping it.
pub struct Db {
    pub(crate) inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("location", &self.inner.storage.location())
            .finish_non_exhaustive()
    }
}

/// Takes the directory lock of a store on real files (an in-memory backend has none).
fn lock_store(dir: &Path, opts: &Options) -> Result<Option<std::fs::File>> {
    match &opts.storage {
        Some(_) => Ok(None),
        None => lock_dir(dir).map(Some),
    }
}

fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("LOCK", e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("LOCK", e)),
    }
}

/// What opening found, before anything is written.
enum Found {
    /// An existing store; its key (if any) is checked.
    Store(KeyRing),
    /// An encrypted store whose creation stopped after the key registry was written: the
    /// key is checked and no data file exists; the manifest is still to be written.
    Unfinished(KeyRing),
    /// No store: one may be created.
    Nothing,
}

fn has_data_files(storage: &dyn Storage) -> Result<bool> {
    let names = storage.list().map_err(|e| Error::io(".", e))?;
    Ok(names.iter().any(|n| {
        parse_file_no(n, ".sst").is_some()
            || parse_file_no(n, ".wal").is_some()
            || parse_file_no(n, ".vlog").is_some()
    }))
}

const MISSING_REGISTRY: &str = "the key registry of an encrypted store is missing";

/// Reads (never writes) what the directory holds, checking the master key first.
fn probe(storage: &dyn Storage, opts: &Options) -> Result<Found> {
    let loc = storage.location();
    let has_registry = storage.exists(REGISTRY_FILE);
    let has_manifest = storage.exists(MANIFEST);
    let manifest_header = || -> Result<version::ManifestHeader> {
        let buf = storage
            .read_all(MANIFEST)
            .map_err(|e| Error::io(MANIFEST, e))?;
        version::decode_header(&buf)
    };
    match (&opts.key_provider, has_registry, has_manifest) {
        (None, true, _) => Err(Error::KeyRequired(loc)),
        (Some(p), true, true) => Ok(Found::Store(KeyRing::load(storage, p.clone())?)),
        (Some(p), true, false) => {
            let ring = KeyRing::load(storage, p.clone())?;
            if has_data_files(storage)? {
                return Err(Error::integrity(
                    MANIFEST,
                    0,
                    "the manifest is missing but data files exist",
                ));
            }
            Ok(Found::Unfinished(ring))
        }
        (Some(_), false, true) => {
            if manifest_header()?.encrypted {
                Err(Error::integrity(REGISTRY_FILE, 0, MISSING_REGISTRY))
            } else {
                Err(Error::NotEncrypted(loc))
            }
        }
        (None, false, true) => {
            let h = manifest_header()?;
            if h.encrypted {
                return Err(Error::integrity(REGISTRY_FILE, 0, MISSING_REGISTRY));
            }
            Ok(Found::Store(KeyRing::plain(h.store_id)))
        }
        (_, false, false) => {
            if has_data_files(storage)? {
                return Err(Error::integrity(
                    MANIFEST,
                    0,
                    "the manifest is missing but data files exist",
                ));
            }
            Ok(Found::Nothing)
        }
    }
}

/// The value log, the authentic length of each file scanned at open, and the torn tails cut.
type RecoveredValueLog = (ValueLog, BTreeMap<u64, u64>, Vec<(String, u64, u64)>);

/// Loads the value-log files: finishes deletions a crash interrupted, checks that every live
/// file is there, and scans the files not known complete (written since the last manifest),
/// cutting a torn tail. Returns the value log and, for scanned files, their authentic length.
fn recover_value_log(
    storage: &dyn Storage,
    keys: &KeyRing,
    manifest: &ManifestState,
    names: &[String],
    max_file_no: &mut u64,
) -> Result<RecoveredValueLog> {
    let mut files = manifest.vlogs.clone();
    for (no, f) in manifest.vlogs.iter() {
        let name = vlog::file_name(*no);
        match f.state {
            vlog::FileState::Deleting => {
                if storage.exists(&name) {
                    storage.remove(&name).map_err(|e| Error::io(&name, e))?;
                }
                files.remove(no);
            }
            vlog::FileState::Live if f.complete && !storage.exists(&name) => {
                return Err(Error::integrity(
                    name,
                    0,
                    "a value-log file named by the manifest is missing",
                ));
            }
            vlog::FileState::Live => {}
        }
    }
    for name in names {
        if let Some(no) = parse_file_no(name, ".vlog") {
            *max_file_no = (*max_file_no).max(no + 1);
            files.entry(no).or_insert_with(|| VlogFile {
                size: 0,
                discard: 0,
                key_ids: Vec::new(),
                state: vlog::FileState::Live,
                complete: false,
            });
        }
    }
    let mut scanned = BTreeMap::new();
    let mut cut = Vec::new();
    let mut gone = Vec::new();
    for (no, f) in files.iter_mut().filter(|(_, f)| !f.complete) {
        let name = vlog::file_name(*no);
        if !storage.exists(&name) {
            if f.size > 0 {
                // The manifest recorded bytes of it as durable.
                return Err(Error::integrity(
                    name,
                    0,
                    "a value-log file named by the manifest is missing",
                ));
            }
            gone.push(*no);
            scanned.insert(*no, 0);
            continue;
        }
        let mut key_ids: Vec<u32> = Vec::new();
        let scan = ValueLog::scan(storage, keys, *no, &mut |_, _, key_id| {
            if !key_ids.contains(&key_id) {
                key_ids.push(key_id);
            }
            Ok(())
        })?;
        if scan.clean_len < f.size {
            // Bytes the last manifest recorded as durable do not authenticate: damage, not a
            // torn write.
            return Err(Error::integrity(
                name,
                scan.clean_len,
                "value-log entry fails authentication below its durable size",
            ));
        }
        if scan.clean_len < scan.file_len {
            cut.push((name.clone(), scan.clean_len, scan.file_len - scan.clean_len));
            // A torn tail of the file being appended to when the process stopped: cut it, so
            // the file is whole again (offsets of the entries before it do not change).
            let mut bytes = storage.read_all(&name).map_err(|e| Error::io(&name, e))?;
            bytes.truncate(scan.clean_len as usize);
            version::write_atomic(storage, &name, &format!("{name}.tmp"), &bytes)?;
        }
        // Its bytes may have been read back from the page cache after a process crash.
        storage.sync_file(&name).map_err(|e| Error::io(&name, e))?;
        f.size = scan.clean_len;
        f.key_ids = key_ids;
        // Marked complete only once the recovered commits are in tables (end of open): a
        // manifest written before that must still call it incomplete, so a crash in between
        // scans it again and checks the replayed pointers again.
        scanned.insert(*no, scan.clean_len);
    }
    for no in gone {
        files.remove(&no);
    }
    Ok((ValueLog::new(files), scanned, cut))
}

fn parse_file_no(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() >= 6 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

impl Db {
    /// Opens (or creates) the store in `dir`.
    ///
    /// An encrypted store is checked against the master key before anything else is read,
    /// and nothing is written when the key is missing or wrong.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let dir = dir.as_ref();
        let storage: Arc<dyn Storage> = match &opts.storage {
            Some(s) => s.clone(),
            None => {
                if !dir.exists() && !opts.create_if_missing {
                    return Err(Error::NotFound(dir.to_path_buf()));
                }
                let s = StdStorage::new(dir, opts.create_if_missing)
                    .map_err(|e| Error::io(dir.display().to_string(), e))?;
                Arc::new(s)
            }
        };
        // Key check first: a missing or wrong key changes no file (not even LOCK). Nothing is
        // written before the lock is held.
        probe(storage.as_ref(), &opts)?;
        let lock = lock_store(dir, &opts)?;
        // Look again under the lock: another process may have created or changed the store
        // between the first look and the lock.
        let found = probe(storage.as_ref(), &opts)?;
        let cache = Arc::new(table::new_cache(opts.block_cache_size));
        let (keys, mut manifest) = match found {
            Found::Store(keys) => {
                let m = version::read_manifest(storage.as_ref(), &keys)?;
                (keys, m)
            }
            Found::Unfinished(keys) => {
                let m = version::write_new_manifest(storage.as_ref(), &keys)?;
                (keys, m)
            }
            Found::Nothing => {
                if !opts.create_if_missing {
                    return Err(Error::NotFound(storage.location()));
                }
                let mut store_id: StoreId = [0; 16];
                sealdb_crypto::fill_random(&mut store_id)?;
                // Registry first, then manifest: a crash in between leaves an unfinished
                // store that the next open completes.
                let keys = match &opts.key_provider {
                    Some(p) => KeyRing::create(storage.as_ref(), store_id, p.clone())?,
                    None => KeyRing::plain(store_id),
                };
                let m = version::write_new_manifest(storage.as_ref(), &keys)?;
                (keys, m)
            }
        };

        let manifest_key_id = match manifest.sealed_key_id {
            Some(id) => id,
            None => keys.active_sealer().key_id(),
        };
        let mut version = Version::empty();
        let mut live_tables = BTreeSet::new();
        let mut max_ts = manifest.last_ts;
        for (level, metas) in manifest.levels.iter().enumerate() {
            for m in metas {
                let t = Table::open(storage.as_ref(), &keys, m.file_no, cache.clone())?;
                t.check_manifest_entry(m)?;
                max_ts = max_ts.max(t.meta.max_ts);
                live_tables.insert(m.file_no);
                version.levels[level].push(Arc::new(t));
            }
        }
        version.normalize();

        let names = storage.list().map_err(|e| Error::io(".", e))?;
        let mut max_file_no = manifest.next_file_no;
        let (vlog, scanned_vlogs, cut_vlog_tails) =
            recover_value_log(storage.as_ref(), &keys, &manifest, &names, &mut max_file_no)?;
        let mut wals = Vec::new();
        for name in &names {
            if let Some(n) = parse_file_no(name, ".wal") {
                max_file_no = max_file_no.max(n + 1);
                if n >= manifest.log_no {
                    wals.push(n);
                }
            } else if let Some(n) = parse_file_no(name, ".sst") {
                max_file_no = max_file_no.max(n + 1);
            }
        }
        wals.sort_unstable();
        let mut imms = Vec::new();
        let mut discarded_tails = cut_vlog_tails;
        let mut prev: Option<(u64, wal::Replay)> = None;
        let mut discarded_wals: Vec<u64> = Vec::new();
        let mut discard_rest = false;
        for &no in &wals {
            let name = wal::file_name(no);
            if discard_rest {
                let len = storage.open(&name).and_then(|f| f.len()).unwrap_or(0);
                discarded_tails.push((name, 0, len));
                discarded_wals.push(no);
                continue;
            }
            let mem = Memtable::new(no);
            let replayed = wal::replay(
                storage.as_ref(),
                &keys,
                no,
                |r| {
                    max_ts = max_ts.max(r.ts);
                    mem.insert(r.to_owned());
                },
                &mut |k| mem.note_wal_key(k),
            )?;
            if let Some((link_no, _)) = replayed.link {
                if link_no >= manifest.log_no && !wals.contains(&link_no) {
                    return Err(Error::integrity(
                        name,
                        0,
                        "the log this one follows is missing (deleted or renamed)",
                    ));
                }
            }
            if let (Some((link_no, link_len)), Some((prev_no, p))) = (replayed.link, &prev) {
                if link_no == *prev_no && link_len > p.clean_len {
                    // Some filesystems persist a file's size before its data: a tail of
                    // zeros is a lost write, not corruption.
                    if p.file_len >= link_len && !p.zero_tail {
                        // Every byte the previous log had when it was frozen is there, yet
                        // a chunk fails: that is corruption, not a torn write.
                        return Err(Error::integrity(
                            wal::file_name(*prev_no),
                            p.clean_len,
                            "chunk fails authentication inside a completed log",
                        ));
                    }
                    // The previous log lost its end in a crash (it was never synced): this
                    // log and later ones hold only newer, unsynced commits. Dropping them
                    // keeps the recovered state a prefix of the commit order.
                    discarded_tails.push((name, 0, replayed.file_len));
                    discarded_wals.push(no);
                    discard_rest = true;
                    continue;
                }
            }
            if let wal::Tail::Torn(offset) = replayed.tail {
                discarded_tails.push((name, offset, replayed.file_len.saturating_sub(offset)));
            }
            prev = Some((no, replayed));
            if mem.is_empty() {
                continue;
            }
            imms.push(Arc::new(mem));
        }
        // Pointers recovered from the logs must reach values that survived the crash. A value
        // lost with an unsynced tail takes its commit and every later one with it (the
        // recovered state stays a prefix of the commit order).
        let mut lost_from_ts = u64::MAX;
        for m in &imms {
            m.for_each(|r| {
                if r.kind == Kind::Pointer {
                    let ptr = Pointer::decode(r.value).ok_or_else(|| {
                        Error::integrity(wal::file_name(m.wal_no), 0, "malformed value pointer")
                    })?;
                    // Only files written since the last manifest can have lost an end. A
                    // pointer into a file GC deleted is an older, superseded version: GC
                    // deletes a file only after its rewrite is durable.
                    if let Some(clean) = scanned_vlogs.get(&ptr.file_no) {
                        if ptr.offset + u64::from(ptr.len) > *clean {
                            lost_from_ts = lost_from_ts.min(r.ts);
                        }
                    }
                }
                Ok::<(), Error>(())
            })?;
        }
        if lost_from_ts != u64::MAX {
            let mut dropped = 0;
            for m in &imms {
                dropped += m.remove_from_ts(lost_from_ts);
            }
            discarded_tails.push((
                format!("{dropped} recovered entries whose values were lost (from commit {lost_from_ts})"),
                0,
                0,
            ));
            imms.retain(|m| !m.is_empty());
        }
        // Obsolete files: tables not in the manifest (an unfinished flush or compaction),
        // logs already in tables, temporary files.
        for name in &names {
            let obsolete = match (parse_file_no(name, ".sst"), parse_file_no(name, ".wal")) {
                (Some(n), _) => !live_tables.contains(&n),
                // Replayed logs that held no commit stay until a manifest moves `log_no` past
                // them: a later log's link may name them.
                (_, Some(n)) => n < manifest.log_no || discarded_wals.contains(&n),
                _ => name.ends_with(".tmp"),
            };
            if obsolete {
                storage
                    .remove(name)
                    .map_err(|e| Error::io(name.as_str(), e))?;
            }
        }

        let wal_no = max_file_no;
        manifest.next_file_no = wal_no + 1;
        let wal = WalWriter::create(storage.as_ref(), wal_no, keys.active_sealer())?;
        let sv = SuperVersion {
            mem: Arc::new(Memtable::new(wal_no)),
            imms,
            version: Arc::new(version),
        };
        let inner = Arc::new(Inner {
            storage,
            keys,
            cache,
            sv: RwLock::new(Arc::new(sv)),
            commit: Mutex::new(CommitState {
                wal,
                frozen_unsynced: Vec::new(),
                vlog: None,
            }),
            edit: Mutex::new(EditState {
                manifest,
                manifest_key_id,
            }),
            oracle: Oracle::new(max_ts),
            bg: Mutex::new(BgState::default()),
            bg_cv: Condvar::new(),
            next_file_no: AtomicU64::new(wal_no + 1),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            bg_error: Mutex::new(None),
            flush_mutex: Mutex::new(()),
            compact_mutex: Mutex::new(()),
            gc_mutex: Mutex::new(()),
            active_vlog: AtomicU64::new(0),
            discarded_tails,
            vlog,
            vlog_pending_delete: Mutex::new(Vec::new()),
            stall_count: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            opts,
            _lock: lock,
        });
        // Recovered commits go to tables now: their logs may hold bytes that were never
        // synced (read back from the page cache after a process crash) or a torn tail, and
        // later sync requests must not be acknowledged on top of them.
        while inner.flush_one()? {}
        for no in scanned_vlogs.keys() {
            inner.vlog.set_complete(*no);
        }
        // A loaded key counts every reserved unit as used (a crash may have sealed them), so
        // reserve ahead now, while the key provider is known to answer: a provider that goes
        // away later then only postpones upkeep.
        if inner.keys.is_encrypted() {
            inner
                .keys
                .maintain(inner.storage.as_ref(), &inner.key_policy())?;
        }
        let mut threads = Vec::new();
        if inner.opts.background_threads {
            let i = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("sealdb-flush".into())
                    .spawn(move || i.flush_loop())
                    .map_err(|e| Error::io("flush thread", e))?,
            );
            let i = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("sealdb-compact".into())
                    .spawn(move || i.compaction_loop())
                    .map_err(|e| Error::io("compaction thread", e))?,
            );
        }
        Ok(Db {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// Flushes memtables to tables, waits for background work to stop, and releases the
    /// store. Reports the first error a background thread hit.
    pub fn close(self) -> Result<()> {
        let r = self.shutdown();
        drop(self);
        // The store's memory (memtables, cache, indexes) was just freed.
        crate::sys::release_free_memory();
        r
    }

    fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut result = Ok(());
        if !inner.is_poisoned() {
            let mut c = inner.commit.lock();
            // Nothing more is appended to the value log: the final manifest records it whole.
            if let Some(w) = c.vlog.take() {
                inner.vlog.set_complete(w.file_no());
            }
            if !inner.sv.read().mem.is_empty() {
                result = inner.rotate_memtable(&mut c);
            }
        }
        inner.closing.store(true, Ordering::Release);
        {
            let mut bg = inner.bg.lock();
            bg.closing = true;
            inner.bg_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if !inner.is_poisoned() {
            // No snapshot is left: collected value-log files can go.
            if let Err(e) = inner.delete_collected() {
                result = result.and(Err(e));
            }
        }
        if !inner.opts.background_threads && result.is_ok() && !inner.is_poisoned() {
            while inner.flush_one()? {}
        }
        if result.is_ok() && inner.is_poisoned() {
            result = Err(inner.bg_error.lock().take().unwrap_or(Error::Poisoned));
        }
        result
    }

    /// Starts a read-write transaction.
    pub fn begin(&self) -> Result<crate::Txn<'_>> {
        self.inner.check()?;
        Ok(crate::txn::Txn::new(self, true))
    }

    /// Starts a read-only transaction (a consistent snapshot).
    pub fn begin_read(&self) -> Result<crate::Txn<'_>> {
        self.inner.check()?;
        Ok(crate::txn::Txn::new(self, false))
    }

    /// Runs `f` in a read-write transaction and commits it; on [`Error::Conflict`] the caller
    /// may retry.
    pub fn update<T>(&self, f: impl FnOnce(&mut crate::Txn<'_>) -> Result<T>) -> Result<T> {
        let mut txn = self.begin()?;
        let v = f(&mut txn)?;
        txn.commit()?;
        Ok(v)
    }

    /// Runs `f` in a read-only transaction.
    pub fn view<T>(&self, f: impl FnOnce(&crate::Txn<'_>) -> Result<T>) -> Result<T> {
        let txn = self.begin_read()?;
        f(&txn)
    }

    /// Reads the latest committed value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.check()?;
        // A registered snapshot: value-log GC does not delete what this read may follow.
        let mark = self.inner.oracle.begin_read();
        let r = self.inner.get_at(key, mark.read_ts)?;
        Ok(r.map(|r| r.value))
    }

    /// Writes one key (a transaction of one blind write).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = self.write_batch();
        b.put(key, value)?;
        b.commit()
    }

    /// Deletes one key.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        let mut b = self.write_batch();
        b.delete(key)?;
        b.commit()
    }

    /// A batch of blind writes for bulk loading (no conflict checks; see [`crate::WriteBatch`]).
    pub fn write_batch(&self) -> crate::WriteBatch<'_> {
        crate::txn::WriteBatch::new(self)
    }

    /// Scans the latest committed state (a read-only snapshot) with `opts`.
    pub fn iter(&self, opts: crate::IterOptions) -> Result<crate::Iter> {
        self.inner.check()?;
        let mark = Arc::new(self.inner.oracle.begin_read());
        self.inner.iter_at(mark, opts, Vec::new(), None)
    }

    /// Waits until no flush or compaction is pending (for tests and tools).
    pub fn wait_for_background(&self) -> Result<()> {
        let inner = &self.inner;
        if !inner.opts.background_threads {
            inner.check()?;
            while inner.flush_one()? {}
            while inner.compact_one()? {}
            return Ok(());
        }
        let mut bg = inner.bg.lock();
        loop {
            inner.check()?;
            let sv = inner.sv.read().clone();
            let pending_compaction =
                compaction::pick(&sv.version.metas(), &inner.policy()).is_some();
            if sv.imms.is_empty() && !pending_compaction && !bg.flush_busy && !bg.compaction_busy {
                return Ok(());
            }
            inner
                .bg_cv
                .wait_for(&mut bg, std::time::Duration::from_millis(50));
        }
    }

    /// Freezes the active memtable and flushes it to a table (waits for it).
    pub fn flush(&self) -> Result<()> {
        self.flush_inner(false)
    }

    /// With `retire_log`, also freezes an empty memtable so its log (whose link chunk may be
    /// sealed under an old key) is retired.
    fn flush_inner(&self, retire_log: bool) -> Result<()> {
        {
            let mut c = self.inner.commit.lock();
            self.inner.check()?;
            if retire_log || !self.inner.sv.read().mem.is_empty() {
                self.inner.rotate_memtable(&mut c)?;
            }
        }
        self.wait_for_background()
    }

    /// Makes every commit so far durable (fsyncs the WAL).
    pub fn sync(&self) -> Result<()> {
        let mut c = self.inner.commit.lock();
        self.inner.check()?;
        let r = c.sync_all(&self.inner.vlog, self.inner.storage.as_ref());
        self.inner.poison_on_err(r)
    }

    /// Creates a new data key and makes it the one new units are sealed under (the next WAL
    /// chunk, new tables, the next manifest). Returns its id. An I/O error writing the
    /// registry poisons the store.
    pub fn rotate_data_key(&self) -> Result<u32> {
        self.inner.check()?;
        let r = self.inner.keys.rotate(self.inner.storage.as_ref());
        let id = self.inner.poison_on_io_err(r)?;
        let mut c = self.inner.commit.lock();
        self.inner.refresh_wal_key(&mut c);
        Ok(id)
    }

    /// Re-wraps every data key under a new master key (given as its provider) and switches to
    /// it, while reads and writes go on. No data file is rewritten; afterwards only the new
    /// master key opens the store.
    ///
    /// An I/O error poisons the store: the registry may or may not be under the new key
    /// after it (the new registry may be in place but not durable), so keep both master keys
    /// until a rotation reports success, and reopen with the one that opens.
    pub fn rotate_master_key(&self, new: Arc<dyn KeyProvider>) -> Result<()> {
        self.inner.check()?;
        let r = self
            .inner
            .keys
            .rotate_master(self.inner.storage.as_ref(), new);
        self.inner.poison_on_io_err(r)
    }

    /// Rewrites, now, every live file whose data key is older than `max_age`: the memtable is
    /// flushed (so no WAL under an old key remains), tables are rewritten under the active key
    /// (rotated first if it is itself too old), and the manifest is resealed. Keys no live
    /// file uses afterwards are retired (and destroyed once `retired_key_retention` passed).
    pub fn rekey(&self, max_age: std::time::Duration) -> Result<crate::RekeyReport> {
        let inner = &self.inner;
        inner.check()?;
        if !inner.keys.is_encrypted() {
            return Err(Error::InvalidArgument("the store is not encrypted"));
        }
        let cutoff = now_secs().saturating_sub(max_age.as_secs());
        let active = inner.keys.active_sealer().key_id();
        if inner
            .keys
            .creation_times()
            .get(&active)
            .is_none_or(|c| *c <= cutoff)
        {
            self.rotate_data_key()?;
        }
        self.flush_inner(true)?;
        let mut report = crate::RekeyReport::default();
        loop {
            let _serial = inner.compact_mutex.lock();
            let metas = inner.super_version().version.metas();
            let Some(task) = inner.rekey_task(&metas, cutoff) else {
                break;
            };
            let bytes: u64 = metas
                .iter()
                .flatten()
                .filter(|m| {
                    task.inputs.contains(&m.file_no) || task.next_inputs.contains(&m.file_no)
                })
                .map(|m| m.size)
                .sum();
            if !inner.run_task(task)? {
                return Err(Error::Closed);
            }
            report.tasks += 1;
            report.bytes_rewritten += bytes;
        }
        // Value-log files under old keys: close the one being appended to (it may hold chunks
        // under an old key), then collect every file that has an old key, whatever its ratio.
        {
            let mut c = inner.commit.lock();
            if let Some(w) = c.vlog.take() {
                inner.vlog.set_complete(w.file_no());
                inner.active_vlog.store(0, Ordering::Release);
            }
        }
        {
            let _serial = inner.gc_mutex.lock();
            for no in inner.vlog_files_under_keys_before(cutoff) {
                let (_, bytes) = inner.gc_file(no)?;
                report.vlog_files += 1;
                report.bytes_rewritten += bytes;
            }
            inner.delete_collected()?;
        }
        {
            let mut edit = inner.edit.lock();
            let mut next = edit.manifest.clone();
            next.generation += 1;
            next.next_file_no = inner.next_file_no.load(Ordering::SeqCst);
            inner.write_manifest_locked(&mut edit, next)?;
        }
        inner.after_tree_change()?;
        report.keys_in_use = inner.keys_in_use().into_iter().collect();
        Ok(report)
    }

    /// Compacts every level down into one (like Badger's Flatten): all versions no snapshot
    /// needs are dropped, which also completes the value log's discard statistics.
    pub fn flatten(&self) -> Result<()> {
        self.flush()?;
        let inner = &self.inner;
        loop {
            let _serial = inner.compact_mutex.lock();
            let metas = inner.super_version().version.metas();
            let Some(task) = compaction::pick_flatten(&metas) else {
                return Ok(());
            };
            if !inner.run_task(task)? {
                return Err(Error::Closed);
            }
        }
    }

    /// Garbage-collects the value log: rewrites the live entries of the file with the most
    /// unreachable bytes (if at least `ratio` of it is unreachable) under the active key,
    /// durably, and deletes the file once no snapshot can reach it. Repeat until it reports
    /// no file to collect.
    pub fn run_value_log_gc(&self, ratio: f64) -> Result<crate::GcReport> {
        let inner = &self.inner;
        inner.check()?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::InvalidArgument(
                "GC ratio must be within 0.0 ..= 1.0",
            ));
        }
        let _serial = inner.gc_mutex.lock();
        let mut report = crate::GcReport::default();
        if let Some(no) = inner.gc_candidates(ratio).first() {
            let (entries, bytes) = inner.gc_file(*no)?;
            report.files_collected = 1;
            report.entries_rewritten = entries;
            report.bytes_rewritten = bytes;
        }
        report.files_deleted = inner.delete_collected()?;
        Ok(report)
    }

    /// Per data key: state, age, units sealed, live files and bytes.
    pub fn encryption_status(&self) -> Result<crate::EncryptionStatus> {
        self.inner.check()?;
        Ok(self.inner.encryption_status())
    }

    /// Levels, tables, sizes and keys.
    pub fn info(&self) -> Result<crate::StoreInfo> {
        self.inner.check()?;
        Ok(self.inner.info())
    }

    /// Reads and authenticates every block of every live table.
    pub fn verify(&self) -> Result<crate::VerifyReport> {
        self.inner.check()?;
        let sv = self.inner.sv.read().clone();
        let mut report = crate::VerifyReport::default();
        for t in sv.version.all_tables() {
            report.entries += t.verify()?;
            report.tables += 1;
            report.bytes += t.meta.size;
        }
        Ok(report)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Inner {
    pub(crate) fn check(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Keeps the first error a background thread hit (returned by `close`) and poisons.
    fn record_background_error(&self, e: Error) {
        self.poisoned.store(true, Ordering::Release);
        let mut slot = self.bg_error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Poisons after a failed write or sync, not after a refusal that wrote nothing (a key
    /// provider's, say).
    fn poison_on_io_err<T>(&self, r: Result<T>) -> Result<T> {
        if matches!(r, Err(Error::Io { .. })) {
            return self.poison_on_err(r);
        }
        r
    }

    fn poison_on_err<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned.store(true, Ordering::Release);
            self.bg_cv.notify_all();
        }
        r
    }

    fn policy(&self) -> Policy {
        Policy {
            l0_trigger: self.opts.level0_compaction_trigger,
            base_level_size: self.opts.base_level_size,
            multiplier: self.opts.level_size_multiplier,
        }
    }

    fn alloc_file_no(&self) -> u64 {
        self.next_file_no.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn super_version(&self) -> Arc<SuperVersion> {
        self.sv.read().clone()
    }

    /// Commits `records` (timestamps are assigned here). With `reads`, checks conflicts first.
    pub(crate) fn commit(
        &self,
        mut records: Vec<Record>,
        reads: Option<(u64, &[u64])>,
        sync: bool,
    ) -> Result<u64> {
        if records.is_empty() {
            return Ok(self.oracle.visible());
        }
        self.stall_if_needed()?;
        let mut c = self.commit.lock();
        self.check()?;
        let ts = self.oracle.prepare_commit(reads).ok_or(Error::Conflict)?;
        for r in &mut records {
            r.ts = ts;
        }
        self.refresh_wal_key(&mut c);
        let sync = sync || self.opts.sync_writes;
        if let Err(e) = self.values_to_vlog(&mut c, &mut records) {
            self.oracle.abandon_commit(ts);
            if matches!(e, Error::Io { .. }) {
                return self.poison_on_err(Err(e));
            }
            return Err(e);
        }
        if sync {
            let r = self
                .vlog
                .sync_written(self.storage.as_ref())
                .and_then(|()| c.sync_frozen());
            if let Err(e) = self.poison_on_err(r) {
                self.oracle.abandon_commit(ts);
                return Err(e);
            }
        }
        if let Err(e) = c.wal.append(&records, sync) {
            self.oracle.abandon_commit(ts);
            // Only a failed write or fsync leaves the log in doubt; a refusal before any
            // byte was written (too large, no randomness) does not poison the store.
            if matches!(e, Error::Io { .. }) {
                return self.poison_on_err(Err(e));
            }
            return Err(e);
        }
        let fps = if reads.is_some() {
            records.iter().map(|r| fingerprint(&r.key)).collect()
        } else {
            Vec::new()
        };
        let mem = self.sv.read().mem.clone();
        mem.note_wal_key(c.wal.key_id());
        for r in records {
            mem.insert(r);
        }
        self.oracle.finish_commit(ts, fps);
        if self.keys.is_encrypted() {
            // Rotation by age or unit count; the next commit's chunk uses the new key. A key
            // provider that is away (a vault restarting) changed nothing: the next commit
            // tries again, until the active key's reserved units run out.
            if !self.keys.upkeep_postponed() || self.keys.must_upkeep_now(&self.key_policy()) {
                let upkeep = self
                    .keys
                    .maintain(self.storage.as_ref(), &self.key_policy())
                    .map(|_| ());
                if let Err(e) = self.unless_provider_away(upkeep) {
                    self.record_background_error(e);
                }
            }
        }
        if mem.size() >= self.opts.memtable_size {
            // The commit is durable as asked and visible: a failed rotation poisons the
            // store for later calls but does not turn this commit into a failure.
            let _ = self.rotate_memtable(&mut c);
        }
        Ok(ts)
    }

    /// Waits while frozen memtables or L0 tables are over their limits.
    fn stall_if_needed(&self) -> Result<()> {
        if !self.opts.background_threads {
            return Ok(());
        }
        let over = |sv: &SuperVersion| {
            sv.imms.len() > self.opts.max_immutable_memtables
                || sv.version.levels[0].len() >= self.opts.level0_stall
        };
        if !over(&self.sv.read()) {
            return Ok(());
        }
        self.stall_count.fetch_add(1, Ordering::Relaxed);
        let mut bg = self.bg.lock();
        while over(&self.sv.read()) {
            self.check()?;
            self.bg_cv
                .wait_for(&mut bg, std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Seals the next WAL chunks under the active data key (after a rotation).
    fn refresh_wal_key(&self, c: &mut CommitState) {
        if !self.keys.is_encrypted() {
            return;
        }
        let sealer = self.keys.active_sealer();
        if sealer.key_id() != c.wal.key_id() {
            c.wal.set_sealer(sealer.clone());
        }
        if let Some(v) = &mut c.vlog {
            if v.key_id() != sealer.key_id() {
                v.set_sealer(sealer);
            }
        }
    }

    /// Moves values of at least `value_threshold` bytes to the value log; their records then
    /// hold pointers. Runs under the commit lock, after timestamps are assigned.
    fn values_to_vlog(&self, c: &mut CommitState, records: &mut [Record]) -> Result<()> {
        for r in records.iter_mut() {
            if r.kind != Kind::Put || r.value.len() < self.opts.value_threshold {
                continue;
            }
            let full = c
                .vlog
                .as_ref()
                .is_none_or(|v| v.len() >= self.opts.value_log_file_size);
            if full {
                let no = self.alloc_file_no();
                let w = VlogWriter::create(self.storage.as_ref(), no, self.keys.active_sealer())?;
                self.active_vlog.store(no, Ordering::Release);
                if let Some(old) = c.vlog.replace(w) {
                    // Nothing more is appended to it; fsyncs go through `sync_written`.
                    self.vlog.set_complete(old.file_no());
                }
            }
            let w = c.vlog.as_mut().expect("created above");
            let ptr = w.append(&r.key, r.ts, r.expires_at, &r.value)?;
            self.vlog
                .note_write(ptr.file_no, ptr.offset + u64::from(ptr.len), w.key_id());
            r.value = ptr.encode();
            r.kind = Kind::Pointer;
        }
        Ok(())
    }

    /// Replaces a pointer record's value by the value it points to.
    pub(crate) fn resolve(&self, mut r: Record) -> Result<Record> {
        if r.kind != Kind::Pointer {
            return Ok(r);
        }
        let ptr = Pointer::decode(&r.value)
            .ok_or_else(|| Error::integrity("table or WAL", 0, "malformed value pointer"))?;
        r.value = self
            .vlog
            .read(self.storage.as_ref(), &self.keys, ptr, &r.key, r.ts)?;
        r.kind = Kind::Put;
        Ok(r)
    }

    fn rotate_memtable(&self, c: &mut CommitState) -> Result<()> {
        let no = self.alloc_file_no();
        let wal = WalWriter::create(self.storage.as_ref(), no, self.keys.active_sealer());
        let mut wal = self.poison_on_err(wal)?;
        let linked = wal.append_link(c.wal.file_no(), c.wal.len());
        self.poison_on_err(linked)?;
        let new_mem = Arc::new(Memtable::new(no));
        new_mem.note_wal_key(wal.key_id());
        let frozen = std::mem::replace(&mut c.wal, wal);
        {
            let mut sv = self.sv.write();
            // Logs whose memtable is already in a table need no fsync any more.
            c.frozen_unsynced
                .retain(|w| sv.imms.iter().any(|m| m.wal_no == w.file_no()));
            c.frozen_unsynced.push(frozen);
            let mut imms = sv.imms.clone();
            imms.push(sv.mem.clone());
            *sv = Arc::new(SuperVersion {
                mem: new_mem.clone(),
                imms,
                version: sv.version.clone(),
            });
        }
        let _bg = self.bg.lock();
        self.bg_cv.notify_all();
        Ok(())
    }

    /// The newest version of `key` visible at `read_ts`, if live.
    pub(crate) fn get_at(&self, key: &[u8], read_ts: u64) -> Result<Option<Record>> {
        let now = now_secs();
        match self.find_version(key, read_ts)? {
            Some(r) if r.is_live(now) => self.resolve(r).map(Some),
            _ => Ok(None),
        }
    }

    /// The newest version of `key` at or below `read_ts`, as stored (tombstones, expired
    /// entries and pointers included).
    fn find_version(&self, key: &[u8], read_ts: u64) -> Result<Option<Record>> {
        let sv = self.super_version();
        let found = |r: Record| Ok(Some(r));
        if let Some(r) = sv.mem.get(key, read_ts) {
            return found(r);
        }
        for m in sv.imms.iter().rev() {
            if let Some(r) = m.get(key, read_ts) {
                return found(r);
            }
        }
        let hash = crate::table::key_hash(key);
        for t in &sv.version.levels[0] {
            if let Some(r) = t.get(key, read_ts, hash)? {
                return found(r);
            }
        }
        for level in &sv.version.levels[1..] {
            let i = level.partition_point(|t| t.meta.largest.as_slice() < key);
            if let Some(t) = level.get(i) {
                if let Some(r) = t.get(key, read_ts, hash)? {
                    return found(r);
                }
            }
        }
        Ok(None)
    }

    pub(crate) fn iter_at(
        self: &Arc<Self>,
        mark: Arc<crate::mvcc::ReadMark>,
        opts: crate::IterOptions,
        pending: Vec<Record>,
        reads: Option<Arc<Mutex<Vec<u64>>>>,
    ) -> Result<crate::Iter> {
        let bounds = opts.bounds();
        let sv = self.super_version();
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        if !pending.is_empty() {
            let mut pending: Vec<Record> = pending
                .into_iter()
                .filter(|r| {
                    bounds
                        .lower
                        .as_deref()
                        .is_none_or(|l| r.key.as_slice() >= l)
                        && bounds.upper.as_deref().is_none_or(|u| r.key.as_slice() < u)
                })
                .collect();
            if bounds.reverse {
                pending.reverse();
            }
            sources.push(Box::new(VecSource::new(pending)));
        }
        sources.push(Box::new(MemSource::new(sv.mem.clone(), bounds.clone())));
        for m in sv.imms.iter().rev() {
            sources.push(Box::new(MemSource::new(m.clone(), bounds.clone())));
        }
        for t in &sv.version.levels[0] {
            sources.push(Box::new(RunSource::new(vec![t.clone()], bounds.clone())?));
        }
        for level in &sv.version.levels[1..] {
            if !level.is_empty() {
                sources.push(Box::new(RunSource::new(level.clone(), bounds.clone())?));
            }
        }
        let merge = Merge::new(sources, bounds.reverse);
        Ok(crate::txn::Iter::new(
            merge,
            mark,
            now_secs(),
            reads,
            self.clone(),
        ))
    }

    fn flush_loop(self: Arc<Self>) {
        loop {
            {
                let mut bg = self.bg.lock();
                loop {
                    if self.is_poisoned() {
                        return;
                    }
                    let has_work = !self.sv.read().imms.is_empty();
                    if has_work {
                        bg.flush_busy = true;
                        break;
                    }
                    if bg.closing {
                        return;
                    }
                    self.bg_cv.wait(&mut bg);
                }
            }
            let r = self.flush_one();
            if let Err(e) = r {
                self.record_background_error(e);
            }
            let mut bg = self.bg.lock();
            bg.flush_busy = false;
            self.bg_cv.notify_all();
        }
    }

    /// Writes the oldest frozen memtable to an L0 table. Returns false if there was none.
    fn flush_one(&self) -> Result<bool> {
        let _serial = self.flush_mutex.lock();
        let Some(mem) = self.super_version().imms.first().cloned() else {
            return Ok(false);
        };
        let mem_wal_no = mem.wal_no;
        let no = self.alloc_file_no();
        let build = || -> Result<TableMeta> {
            let mut b = TableBuilder::create(
                self.storage.as_ref(),
                no,
                self.keys.active_sealer(),
                self.opts.block_size,
            )?;
            mem.for_each(|r| b.add(r))?;
            b.finish(self.opts.bloom_bits_per_key)
        };
        // An empty memtable (frozen to retire its log, e.g. by rekey) makes no table.
        let table = if mem.is_empty() {
            None
        } else {
            let meta = self.poison_on_err(build())?;
            // The new table's name is durable before the manifest names it.
            let synced = self.storage.sync_dir().map_err(|e| Error::io(".", e));
            self.poison_on_err(synced)?;
            let table = Table::open(self.storage.as_ref(), &self.keys, no, self.cache.clone());
            Some((meta, Arc::new(self.poison_on_err(table)?)))
        };
        let mut edit = self.edit.lock();
        let mut next = edit.manifest.clone();
        next.generation += 1;
        next.next_file_no = self.next_file_no.load(Ordering::SeqCst);
        if let Some((meta, _)) = &table {
            next.levels[0].push(meta.clone());
        }
        next.last_ts = next.last_ts.max(mem.max_ts());
        let sv = self.super_version();
        // The next memtable still in memory decides which logs are needed.
        next.log_no = sv.imms.get(1).map_or(sv.mem.wal_no, |m| m.wal_no);
        self.write_manifest_locked(&mut edit, next)?;
        {
            let mut cur = self.sv.write();
            let mut version = (*cur.version).clone();
            if let Some((_, table)) = table {
                version.levels[0].push(table);
            }
            version.normalize();
            let imms = cur
                .imms
                .iter()
                .filter(|m| !Arc::ptr_eq(m, &mem))
                .cloned()
                .collect();
            *cur = Arc::new(SuperVersion {
                mem: cur.mem.clone(),
                imms,
                version: Arc::new(version),
            });
        }
        drop(edit);
        drop(mem);
        crate::sys::release_free_memory();
        let name = wal::file_name(mem_wal_no);
        // A log that outlives its flush is only wasted space: it is removed on the next open.
        let _ = self.storage.remove(&name);
        self.after_tree_change()?;
        Ok(true)
    }

    /// Value-log files worth collecting: at least `ratio` of their bytes unreachable, not
    /// the file being appended to. Best first.
    fn gc_candidates(&self, ratio: f64) -> Vec<u64> {
        // An atomic, not the commit lock: the background thread asks while holding `bg`.
        let active = Some(self.active_vlog.load(Ordering::Acquire));
        let queued: Vec<u64> = self
            .vlog_pending_delete
            .lock()
            .iter()
            .map(|(no, _)| *no)
            .collect();
        let mut c: Vec<(f64, u64)> = self
            .vlog
            .files()
            .into_iter()
            .filter(|(no, f)| {
                Some(*no) != active
                    && !queued.contains(no)
                    && f.state == vlog::FileState::Live
                    && f.complete
                    && f.size > 0
            })
            .map(|(no, f)| (f.discard as f64 / f.size as f64, no))
            .filter(|(r, _)| *r >= ratio)
            .collect();
        c.sort_by(|a, b| b.0.total_cmp(&a.0));
        c.into_iter().map(|(_, no)| no).collect()
    }

    /// Whether the newest version of `key` is the value at `ptr`.
    fn points_here(&self, key: &[u8], ptr: Pointer) -> Result<bool> {
        let Some(r) = self.find_version(key, self.oracle.visible())? else {
            return Ok(false);
        };
        // Expired entries count as live here: a snapshot taken before they expired may still
        // read them; compaction drops them later.
        Ok(r.kind == Kind::Pointer && Pointer::decode(&r.value) == Some(ptr))
    }

    /// Rewrites the live entries of value-log file `no` under the active key, durably, then
    /// queues the file for deletion. Returns (entries, bytes) rewritten.
    fn gc_file(&self, no: u64) -> Result<(u64, u64)> {
        type Live = (Pointer, Vec<u8>, u64, Vec<u8>);
        let mut batch: Vec<Live> = Vec::new();
        let mut batch_bytes = 0usize;
        let (mut entries, mut bytes) = (0u64, 0u64);
        // A commit still in progress may have written into this file (it was marked complete
        // under the commit lock, mid-commit): wait for it, so `points_here` sees it.
        drop(self.commit.lock());
        ValueLog::scan(self.storage.as_ref(), &self.keys, no, &mut |ptr, e, _| {
            if self.points_here(e.key, ptr)? {
                batch_bytes += e.value.len();
                batch.push((ptr, e.key.to_vec(), e.expires_at, e.value.to_vec()));
                if batch_bytes >= 4 << 20 {
                    let (n, b) = self.gc_rewrite(std::mem::take(&mut batch))?;
                    entries += n;
                    bytes += b;
                    batch_bytes = 0;
                }
            }
            Ok(())
        })?;
        let (n, b) = self.gc_rewrite(batch)?;
        entries += n;
        bytes += b;
        self.vlog_pending_delete
            .lock()
            .push((no, self.oracle.visible()));
        Ok((entries, bytes))
    }

    /// Commits live value-log entries again (new timestamp, same value), each only if its
    /// key still points at the old entry, and makes the commit durable.
    fn gc_rewrite(&self, batch: Vec<(Pointer, Vec<u8>, u64, Vec<u8>)>) -> Result<(u64, u64)> {
        if batch.is_empty() {
            return Ok((0, 0));
        }
        let mut c = self.commit.lock();
        self.check()?;
        let mut records = Vec::new();
        for (ptr, key, expires_at, value) in batch {
            // A write that superseded the entry since the scan wins.
            if self.points_here(&key, ptr)? {
                records.push(make_record(&key, Kind::Put, &value, expires_at));
            }
        }
        if records.is_empty() {
            return Ok((0, 0));
        }
        let ts = self.oracle.prepare_commit(None).ok_or(Error::Conflict)?;
        let bytes: u64 = records.iter().map(|r| r.value.len() as u64).sum();
        for r in &mut records {
            r.ts = ts;
        }
        self.refresh_wal_key(&mut c);
        let written = self
            .values_to_vlog(&mut c, &mut records)
            .and_then(|()| self.vlog.sync_written(self.storage.as_ref()))
            .and_then(|()| c.sync_frozen())
            .and_then(|()| c.wal.append(&records, true));
        if let Err(e) = written {
            self.oracle.abandon_commit(ts);
            return self.poison_on_err(Err(e));
        }
        let n = records.len() as u64;
        let mem = self.sv.read().mem.clone();
        mem.note_wal_key(c.wal.key_id());
        for r in records {
            mem.insert(r);
        }
        self.oracle.finish_commit(ts, Vec::new());
        if mem.size() >= self.opts.memtable_size {
            let _ = self.rotate_memtable(&mut c);
        }
        Ok((n, bytes))
    }

    /// Deletes collected value-log files no snapshot can reach any more: first the manifest
    /// marks them deleting (so a crash finishes the job), then they are removed.
    fn delete_collected(&self) -> Result<u64> {
        let watermark = self.oracle.watermark();
        let due: Vec<u64> = {
            let mut pending = self.vlog_pending_delete.lock();
            let due = pending
                .iter()
                .filter(|(_, ts)| *ts <= watermark)
                .map(|(no, _)| *no)
                .collect();
            pending.retain(|(_, ts)| *ts > watermark);
            due
        };
        if due.is_empty() {
            return Ok(0);
        }
        // GC skipped entries that newer writes superseded; those writes must survive a crash,
        // or the old versions (pointing into the files about to go) would come back.
        {
            let mut c = self.commit.lock();
            let synced = c.sync_all(&self.vlog, self.storage.as_ref());
            self.poison_on_err(synced)?;
        }
        for no in &due {
            self.vlog.set_state(*no, vlog::FileState::Deleting);
        }
        {
            let mut edit = self.edit.lock();
            let mut next = edit.manifest.clone();
            next.generation += 1;
            next.next_file_no = self.next_file_no.load(Ordering::SeqCst);
            self.write_manifest_locked(&mut edit, next)?;
        }
        for no in &due {
            let name = vlog::file_name(*no);
            match self.storage.remove(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return self.poison_on_err(Err(Error::io(name, e))),
            }
            self.vlog.forget(*no);
        }
        let synced = self.storage.sync_dir().map_err(|e| Error::io(".", e));
        self.poison_on_err(synced)?;
        Ok(due.len() as u64)
    }

    /// Value-log files sealed (partly) under a key older than `max_key_age`: collected
    /// whatever their ratio, so old keys in the value log are bounded like in tables.
    fn vlog_files_under_old_keys(&self) -> Vec<u64> {
        match self.opts.max_key_age {
            Some(age) => {
                self.vlog_files_under_keys_before(now_secs().saturating_sub(age.as_secs()))
            }
            None => Vec::new(),
        }
    }

    /// Value-log files with chunks under a key (not the active one) created at or before
    /// `cutoff`; never the file being appended to, one not yet whole, or one queued for
    /// deletion.
    fn vlog_files_under_keys_before(&self, cutoff: u64) -> Vec<u64> {
        if !self.keys.is_encrypted() {
            return Vec::new();
        }
        let created = self.keys.creation_times();
        let active_key = self.keys.active_sealer().key_id();
        let active_file = self.active_vlog.load(Ordering::Acquire);
        let queued: Vec<u64> = self
            .vlog_pending_delete
            .lock()
            .iter()
            .map(|(no, _)| *no)
            .collect();
        self.vlog
            .files()
            .into_iter()
            .filter(|(no, f)| {
                *no != active_file
                    && !queued.contains(no)
                    && f.state == vlog::FileState::Live
                    && f.complete
                    && f.key_ids
                        .iter()
                        .any(|id| *id != active_key && created.get(id).is_none_or(|c| *c <= cutoff))
            })
            .map(|(no, _)| no)
            .collect()
    }

    fn gc_due(&self) -> bool {
        let watermark = self.oracle.watermark();
        self.vlog_pending_delete
            .lock()
            .iter()
            .any(|(_, ts)| *ts <= watermark)
            || self
                .opts
                .value_log_gc_ratio
                .is_some_and(|r| !self.gc_candidates(r).is_empty())
            || !self.vlog_files_under_old_keys().is_empty()
    }

    /// One background GC step: collect the best candidate file, delete what is due.
    fn background_gc(&self) -> Result<bool> {
        let _serial = self.gc_mutex.lock();
        let deleted = self.delete_collected()?;
        let mut candidates = match self.opts.value_log_gc_ratio {
            Some(ratio) => self.gc_candidates(ratio),
            None => Vec::new(),
        };
        candidates.extend(self.vlog_files_under_old_keys());
        match candidates.first() {
            Some(no) => {
                self.gc_file(*no)?;
                self.delete_collected()?;
                Ok(true)
            }
            None => Ok(deleted > 0),
        }
    }

    fn compaction_loop(self: Arc<Self>) {
        loop {
            {
                let mut bg = self.bg.lock();
                loop {
                    if self.is_poisoned() || bg.closing {
                        return;
                    }
                    if self.next_task().is_some() || self.gc_due() {
                        bg.compaction_busy = true;
                        break;
                    }
                    // Rekey work depends on the clock: look again now and then.
                    self.bg_cv
                        .wait_for(&mut bg, std::time::Duration::from_secs(1));
                }
            }
            // Compaction first; value-log GC only when the tree needs nothing.
            let r = match self.compact_one() {
                Ok(false) => self.background_gc().map(|_| ()),
                other => other.map(|_| ()),
            };
            match r {
                // Close began during the work: nothing failed.
                Err(Error::Closed) | Ok(()) => {}
                Err(e) => self.record_background_error(e),
            }
            let mut bg = self.bg.lock();
            bg.compaction_busy = false;
            self.bg_cv.notify_all();
        }
    }

    /// The next compaction: the tree's shape first, then (at low priority) a rekey rewrite
    /// of a table whose key is older than `max_key_age`.
    fn next_task(&self) -> Option<Task> {
        let metas = self.super_version().version.metas();
        compaction::pick(&metas, &self.policy()).or_else(|| {
            let age = self.opts.max_key_age?.as_secs();
            self.rekey_task(&metas, now_secs().saturating_sub(age))
        })
    }

    /// A rewrite of a table sealed under a key (other than the active one) created at or
    /// before `cutoff`; keys the registry no longer has count as old.
    fn rekey_task(&self, metas: &[Vec<TableMeta>], cutoff: u64) -> Option<Task> {
        if !self.keys.is_encrypted() {
            return None;
        }
        let created = self.keys.creation_times();
        let active = self.keys.active_sealer().key_id();
        let is_old = |id: u32| id != active && created.get(&id).is_none_or(|c| *c <= cutoff);
        compaction::pick_rekey(metas, &is_old)
    }

    /// Runs one compaction if the policy picks one. Returns false if there was none.
    fn compact_one(&self) -> Result<bool> {
        let _serial = self.compact_mutex.lock();
        let Some(task) = self.next_task() else {
            return Ok(false);
        };
        self.run_task(task)
    }

    /// Runs `task` (the caller holds `compact_mutex`). Returns false if it was cancelled.
    fn run_task(&self, task: Task) -> Result<bool> {
        let sv = self.super_version();
        let find = |level: usize, nos: &[u64]| -> Vec<Arc<Table>> {
            sv.version.levels[level]
                .iter()
                .filter(|t| nos.contains(&t.meta.file_no))
                .cloned()
                .collect()
        };
        let inputs = find(task.level, &task.inputs);
        let next_inputs = find(task.level + 1, &task.next_inputs);
        // Value-log bytes the merge drops count only if the merge completes (not cancelled).
        let discards = std::cell::RefCell::new(Vec::<Pointer>::new());
        let outputs = if task.trivial_move {
            inputs.clone()
        } else {
            let created = std::cell::RefCell::new(Vec::new());
            let mut new_table = || {
                let no = self.alloc_file_no();
                created.borrow_mut().push(no);
                TableBuilder::create(
                    self.storage.as_ref(),
                    no,
                    self.keys.active_sealer(),
                    self.opts.block_size,
                )
            };
            let metas = compaction::run(
                inputs.clone(),
                task.level,
                next_inputs.clone(),
                task.bottom,
                compaction::Output {
                    new_table: &mut new_table,
                    bits_per_key: self.opts.bloom_bits_per_key,
                    target_file_size: self.opts.target_file_size,
                    watermark: self.oracle.watermark(),
                    now: now_secs(),
                    cancelled: &|| self.closing.load(Ordering::Acquire),
                    dropped: &mut |r: &Record| {
                        if r.kind == Kind::Pointer {
                            if let Some(p) = Pointer::decode(&r.value) {
                                discards.borrow_mut().push(p);
                            }
                        }
                    },
                },
            );
            if matches!(metas, Err(Error::Closed)) {
                // Closing: drop the partial outputs; the inputs are untouched.
                for no in created.borrow().iter() {
                    let _ = self.storage.remove(&table::file_name(*no));
                }
                return Ok(false);
            }
            let metas = self.poison_on_err(metas)?;
            let synced = self.storage.sync_dir().map_err(|e| Error::io(".", e));
            self.poison_on_err(synced)?;
            let mut tables = Vec::new();
            for m in metas {
                let t = Table::open(
                    self.storage.as_ref(),
                    &self.keys,
                    m.file_no,
                    self.cache.clone(),
                );
                tables.push(Arc::new(self.poison_on_err(t)?));
            }
            tables
        };
        // The merge completed: its drops count, and the manifest the install writes has them.
        for p in discards.into_inner() {
            self.vlog.add_discard(p.file_no, u64::from(p.len));
        }
        self.install_compaction(&task, &outputs)?;
        if !task.trivial_move {
            for t in inputs.iter().chain(&next_inputs) {
                t.evict_from_cache();
                let _ = self.storage.remove(t.name());
            }
        }
        self.compactions.fetch_add(1, Ordering::Relaxed);
        self.after_tree_change()?;
        Ok(true)
    }

    /// Key upkeep after the set of live files changed: extend or rotate the active key, retire
    /// keys nothing uses any more, destroy retired keys past their retention.
    fn after_tree_change(&self) -> Result<()> {
        if !self.keys.is_encrypted() {
            return Ok(());
        }
        {
            // Writers of logs whose memtable is in a table need no fsync; dropping them also
            // lets go of the keys they held.
            let sv = self.super_version();
            self.commit
                .lock()
                .frozen_unsynced
                .retain(|w| sv.imms.iter().any(|m| m.wal_no == w.file_no()));
        }
        if self.keys.upkeep_postponed() && !self.keys.must_upkeep_now(&self.key_policy()) {
            return Ok(());
        }
        let upkeep = self
            .keys
            .maintain(self.storage.as_ref(), &self.key_policy())
            .map(|_| ());
        self.unless_provider_away(upkeep)?;
        if self.keys.upkeep_postponed() {
            return Ok(());
        }
        let in_use = self.keys_in_use();
        let retention = self.opts.retired_key_retention.as_secs();
        let retire = self
            .keys
            .retire_unused(self.storage.as_ref(), &in_use, retention);
        self.unless_provider_away(retire)
    }

    /// Key upkeep that failed because the key provider is away (a vault restarting) changed
    /// nothing and is tried again later; it is an error only once the active key's reserved
    /// units have run out, since sealing more could not be accounted for after a crash.
    fn unless_provider_away(&self, r: Result<()>) -> Result<()> {
        match r {
            Err(Error::KeyProvider(_)) if !self.keys.must_upkeep_now(&self.key_policy()) => {
                self.keys.postpone_upkeep(UPKEEP_BACKOFF);
                Ok(())
            }
            r => r,
        }
    }

    fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            // The active key may not outlive the rekey bound either.
            rotation_interval: match (self.opts.key_rotation_interval, self.opts.max_key_age) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|d| d.as_secs().max(1)),
            max_units: self.opts.max_units_per_key.min(MAX_UNITS_PER_KEY),
        }
    }

    /// Key ids of every live file: tables, WALs of memtables in memory, the manifest.
    fn keys_in_use(&self) -> BTreeSet<u32> {
        let sv = self.super_version();
        let mut ids: BTreeSet<u32> = sv.version.all_tables().map(|t| t.meta.key_id).collect();
        for m in std::iter::once(&sv.mem).chain(sv.imms.iter()) {
            ids.extend(m.wal_key_ids());
        }
        ids.insert(self.edit.lock().manifest_key_id);
        for f in self.vlog.files().values() {
            ids.extend(f.key_ids.iter().copied());
        }
        ids
    }

    fn install_compaction(&self, task: &Task, outputs: &[Arc<Table>]) -> Result<()> {
        let removed: BTreeSet<u64> = task
            .inputs
            .iter()
            .chain(&task.next_inputs)
            .copied()
            .collect();
        let mut edit = self.edit.lock();
        let mut next = edit.manifest.clone();
        next.generation += 1;
        next.next_file_no = self.next_file_no.load(Ordering::SeqCst);
        let touched = task.level..=(task.level + 1).min(NUM_LEVELS - 1);
        for level in touched.clone() {
            next.levels[level].retain(|m| !removed.contains(&m.file_no));
        }
        next.levels[task.output_level].extend(outputs.iter().map(|t| t.meta.clone()));
        next.levels[task.output_level].sort_by(|a, b| a.smallest.cmp(&b.smallest));
        self.write_manifest_locked(&mut edit, next)?;
        let mut cur = self.sv.write();
        let mut version = (*cur.version).clone();
        for level in touched {
            version.levels[level].retain(|t| !removed.contains(&t.meta.file_no));
        }
        version.levels[task.output_level].extend(outputs.iter().cloned());
        version.normalize();
        *cur = Arc::new(SuperVersion {
            mem: cur.mem.clone(),
            imms: cur.imms.clone(),
            version: Arc::new(version),
        });
        Ok(())
    }

    /// Writes `next` as the manifest (sealed under the active key) and adopts it.
    fn write_manifest_locked(&self, edit: &mut EditState, mut next: ManifestState) -> Result<()> {
        // Tables about to be named may point into the value log: its data is durable first.
        // Only then may the manifest call a file complete.
        // The state is taken before the fsync: a file it calls complete had all its bytes
        // written by then, so the fsync covers them.
        let vlogs = self.vlog.files();
        let synced = self.vlog.sync_written(self.storage.as_ref());
        self.poison_on_err(synced)?;
        next.vlogs = vlogs;
        let r = version::write_manifest(self.storage.as_ref(), &self.keys, &next);
        let sealed_under = self.poison_on_err(r)?;
        edit.manifest = next;
        edit.manifest_key_id = sealed_under;
        Ok(())
    }

    fn encryption_status(&self) -> crate::EncryptionStatus {
        let sv = self.super_version();
        let manifest_key = self.edit.lock().manifest_key_id;
        let vlog_files = self.vlog.files();
        let now = now_secs();
        let mut keys = Vec::new();
        for k in self.keys.key_infos() {
            let tables: Vec<&Arc<Table>> = sv
                .version
                .all_tables()
                .filter(|t| t.meta.key_id == k.id)
                .collect();
            let wals = std::iter::once(&sv.mem)
                .chain(sv.imms.iter())
                .filter(|m| m.wal_key_ids().contains(&k.id))
                .count()
                + vlog_files
                    .values()
                    .filter(|f| f.key_ids.contains(&k.id))
                    .count();
            keys.push(crate::KeyStatus {
                id: k.id,
                created: k.created,
                state: k.state,
                retired_at: k.retired_at,
                units_sealed: k.units_sealed,
                live_files: (tables.len() + wals + usize::from(manifest_key == k.id)) as u64,
                live_table_bytes: tables.iter().map(|t| t.meta.size).sum(),
            });
        }
        let in_use = self.keys_in_use();
        let oldest = keys
            .iter()
            .filter(|k| in_use.contains(&k.id))
            .map(|k| now.saturating_sub(k.created))
            .max();
        crate::EncryptionStatus {
            encrypted: self.keys.is_encrypted(),
            active_key_id: self.keys.active_sealer().key_id(),
            keys,
            oldest_key_in_use_age_secs: oldest,
        }
    }

    fn info(&self) -> crate::StoreInfo {
        let sv = self.super_version();
        let mut levels = Vec::new();
        let mut tables = Vec::new();
        let mut key_ids = BTreeSet::new();
        let mut pinned = 0;
        for (level, ts) in sv.version.levels.iter().enumerate() {
            levels.push(crate::LevelInfo {
                level,
                tables: ts.len(),
                bytes: ts.iter().map(|t| t.meta.size).sum(),
                entries: ts.iter().map(|t| t.meta.entries).sum(),
            });
            for t in ts {
                key_ids.insert(t.meta.key_id);
                pinned += t.pinned_memory();
                tables.push(crate::TableInfo {
                    file: t.name().to_string(),
                    level,
                    bytes: t.meta.size,
                    entries: t.meta.entries,
                    key_id: t.meta.key_id,
                });
            }
        }
        let mems: Vec<&Arc<Memtable>> = std::iter::once(&sv.mem).chain(sv.imms.iter()).collect();
        crate::StoreInfo {
            location: self.storage.location(),
            encrypted: self.keys.is_encrypted(),
            active_key_id: self.keys.active_sealer().key_id(),
            key_ids_in_use: key_ids.into_iter().collect(),
            keys: self.keys.key_infos(),
            levels,
            tables,
            memtables: mems.len(),
            memtable_bytes: mems.iter().map(|m| m.size()).sum(),
            wal_files: mems.iter().map(|m| wal::file_name(m.wal_no)).collect(),
            block_cache_bytes: self.cache.weight(),
            pinned_index_filter_bytes: pinned,
            last_commit_ts: self.oracle.visible(),
            write_stalls: self.stall_count.load(Ordering::Relaxed),
            value_log_files: self
                .vlog
                .files()
                .into_iter()
                .map(|(no, f)| crate::ValueLogFileInfo {
                    file: vlog::file_name(no),
                    bytes: f.size,
                    discardable_bytes: f.discard,
                    key_ids: f.key_ids,
                })
                .collect(),
            discarded_wal_tails: self
                .discarded_tails
                .iter()
                .map(|(f, off, n)| format!("{f}: {n} bytes from offset {off}"))
                .collect(),
            compactions: self.compactions.load(Ordering::Relaxed),
        }
    }
}

/// Checks a closed store without changing it: the key, the registry, the manifest, every
/// block of every live table and every chunk of every live WAL (strictly: a torn tail is
/// reported too). The store must not be open elsewhere.
pub fn verify_store(dir: impl AsRef<Path>, opts: &Options) -> Result<crate::VerifyReport> {
    let dir = dir.as_ref();
    let storage: Arc<dyn Storage> = match &opts.storage {
        Some(s) => s.clone(),
        None => {
            if !dir.is_dir() {
                return Err(Error::NotFound(dir.to_path_buf()));
            }
            Arc::new(
                StdStorage::new(dir, false).map_err(|e| Error::io(dir.display().to_string(), e))?,
            )
        }
    };
    let keys = match probe(storage.as_ref(), opts)? {
        Found::Store(keys) => keys,
        Found::Unfinished(_) => {
            return Err(Error::format(
                MANIFEST,
                0,
                "missing: the store's creation was interrupted (opening it completes it)",
            ))
        }
        Found::Nothing => return Err(Error::NotFound(storage.location())),
    };
    let _lock = lock_store(dir, opts)?;
    let manifest = version::read_manifest(storage.as_ref(), &keys)?;
    let cache = Arc::new(table::new_cache(1 << 20));
    let mut report = crate::VerifyReport::default();
    if keys.is_encrypted() {
        report.files.push(REGISTRY_FILE.to_string());
    }
    report.files.push(MANIFEST.to_string());
    for m in manifest.levels.iter().flatten() {
        let t = Table::open(storage.as_ref(), &keys, m.file_no, cache.clone())?;
        t.check_manifest_entry(m)?;
        report.entries += t.verify()?;
        report.tables += 1;
        report.bytes += t.meta.size;
        report.files.push(t.name().to_string());
    }
    for name in storage.list().map_err(|e| Error::io(".", e))? {
        if let Some(n) = parse_file_no(&name, ".wal") {
            if n >= manifest.log_no {
                report.wal_records += wal::verify(storage.as_ref(), &keys, n)?;
                report.wal_files += 1;
                report.files.push(name);
            }
        } else if let Some(n) = parse_file_no(&name, ".vlog") {
            let mut entries = 0u64;
            let scan = ValueLog::scan(storage.as_ref(), &keys, n, &mut |_, _, _| {
                entries += 1;
                Ok(())
            })?;
            if let crate::chunk::Tail::Torn(at) = scan.tail {
                return Err(Error::integrity(
                    name,
                    at,
                    "last value-log entry is incomplete or fails authentication (a torn tail is cut on the next open)",
                ));
            }
            report.vlog_files += 1;
            report.vlog_entries += entries;
            report.files.push(name);
        }
    }
    for (no, f) in &manifest.vlogs {
        let name = vlog::file_name(*no);
        if f.state == vlog::FileState::Live && f.complete && !storage.exists(&name) {
            return Err(Error::integrity(
                name,
                0,
                "a value-log file named by the manifest is missing",
            ));
        }
    }
    Ok(report)
}

pub(crate) fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty key"));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(Error::InvalidArgument("key larger than 65535 bytes"));
    }
    Ok(())
}

pub(crate) fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(Error::InvalidArgument("value larger than 256 MiB"));
    }
    Ok(())
}

pub(crate) fn make_record(key: &[u8], kind: Kind, value: &[u8], expires_at: u64) -> Record {
    Record {
        key: key.to_vec(),
        ts: 0,
        kind,
        expires_at,
        value: value.to_vec(),
    }
}

//! sealdb: an embedded, transactional key-value store whose files are encrypted and
//! authenticated from the first byte.
//!
//! The shape is Badger's: a memtable with its own write-ahead log, sorted tables in levels
//! compacted in the background, and MVCC transactions with serializable snapshot isolation.
//! Every unit written to disk (WAL chunk, table block, index, filter, manifest) is sealed
//! with AES-256-GCM under a data key, with a random nonce and associated data that binds it
//! to its store, file and position; a modified, moved or swapped unit is reported as
//! [`Error::Integrity`] and never returned as data.
//!
//! Key modes: unencrypted (no key provider) and `host` ([`HostKeyProvider`]: a master key
//! from a key file wraps the data keys kept in the store's `KEYREGISTRY`). The master key
//! never touches a data file. Key mode `vault` is another [`KeyProvider`]
//! (`sealdb-vault-client`): the master key stays in a TEE vault, which wraps and unwraps
//! data keys on request.
//!
//! Data keys rotate by age and by the number of units sealed, old files are rewritten under
//! new keys (rekey), unused keys are destroyed (crypto-shredding), and the master key rotates
//! online. Values of at least `value_threshold` bytes live in a value log (sealed the same way)
//! with pointers in the tree, and are garbage-collected. Not (yet) here: backup/restore. See `ARCHITECTURE.md` for the codemap and invariants and `docs/` for the
//! byte-level format and the durability rules.
//!
//! ```
//! use sealdb::{Db, Options, IterOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path(), Options::default()).unwrap();
//! db.update(|txn| {
//!     txn.set(b"user/1", b"ada")?;
//!     txn.set(b"user/2", b"grace")
//! }).unwrap();
//! assert_eq!(db.get(b"user/1").unwrap().as_deref(), Some(&b"ada"[..]));
//! let names: Vec<Vec<u8>> = db
//!     .iter(IterOptions::prefix(b"user/")).unwrap()
//!     .map(|kv| kv.unwrap().value)
//!     .collect();
//! assert_eq!(names, vec![b"ada".to_vec(), b"grace".to_vec()]);
//! db.close().unwrap();
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod chunk;
mod codec;
mod compaction;
mod db;
mod entry;
mod error;
pub mod fs;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod iter;
mod keys;
mod memtable;
mod mvcc;
mod sys;
mod table;
mod txn;
mod version;
mod vlog;
mod wal;

pub use db::{verify_store, Db, Options, MAX_KEY_SIZE, MAX_UNITS_PER_KEY, MAX_VALUE_SIZE};
pub use error::{Error, Result};
pub use keys::{read_key_file, HostKeyProvider, KeyInfo, KeyProvider, KeyState};
pub use txn::{Iter, IterOptions, KeyValue, Txn, WriteBatch};

/// A snapshot of the store's shape, for `sealdb info`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreInfo {
    /// Where the store lives.
    pub location: std::path::PathBuf,
    /// Whether the store is encrypted.
    pub encrypted: bool,
    /// Key id new files are sealed under (0 for an unencrypted store).
    pub active_key_id: u32,
    /// Key ids used by live tables.
    pub key_ids_in_use: Vec<u32>,
    /// The data keys in the registry.
    pub keys: Vec<KeyInfo>,
    /// Per level: tables, bytes, entries.
    pub levels: Vec<LevelInfo>,
    /// Every live table.
    pub tables: Vec<TableInfo>,
    /// Memtables in memory (active and frozen).
    pub memtables: usize,
    /// Memory the memtables use.
    pub memtable_bytes: usize,
    /// WAL files backing the memtables.
    pub wal_files: Vec<String>,
    /// Memory held by the block cache.
    pub block_cache_bytes: u64,
    /// Memory pinned by table indexes and filters.
    pub pinned_index_filter_bytes: usize,
    /// Highest committed timestamp.
    pub last_commit_ts: u64,
    /// Times a writer waited for flush or compaction.
    pub write_stalls: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// Value-log files: size, bytes no live version points to, keys.
    pub value_log_files: Vec<ValueLogFileInfo>,
    /// Incomplete or unauthentic WAL tails discarded when the store was opened (a crash
    /// during a write that was not yet synced leaves one).
    pub discarded_wal_tails: Vec<String>,
}

/// One value-log file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ValueLogFileInfo {
    /// File name.
    pub file: String,
    /// Bytes.
    pub bytes: u64,
    /// Bytes of entries no live version points to (reclaimable by GC).
    pub discardable_bytes: u64,
    /// Data keys its entries are sealed under.
    pub key_ids: Vec<u32>,
}

/// One level of the tree.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LevelInfo {
    /// Level number (0 = newest).
    pub level: usize,
    /// Number of tables.
    pub tables: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// Entries (all versions).
    pub entries: u64,
}

/// One table file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TableInfo {
    /// File name.
    pub file: String,
    /// Level.
    pub level: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// Entries (all versions).
    pub entries: u64,
    /// Data key it is sealed under.
    pub key_id: u32,
}

/// Encryption at a glance: the data keys and what uses them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EncryptionStatus {
    /// Whether the store is encrypted.
    pub encrypted: bool,
    /// The key new units are sealed under.
    pub active_key_id: u32,
    /// Every key in the registry (destroyed ones included, without material).
    pub keys: Vec<KeyStatus>,
    /// Age in seconds of the oldest key a live file uses.
    pub oldest_key_in_use_age_secs: Option<u64>,
}

/// One data key in [`EncryptionStatus`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeyStatus {
    /// Key id.
    pub id: u32,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Registry state.
    pub state: KeyState,
    /// When it was retired, Unix seconds.
    pub retired_at: Option<u64>,
    /// Units sealed under it (an upper bound after a restart).
    pub units_sealed: u64,
    /// Live files with units under it (tables, WALs, the manifest).
    pub live_files: u64,
    /// Bytes of live tables sealed under it.
    pub live_table_bytes: u64,
}

/// What [`Db::run_value_log_gc`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GcReport {
    /// Value-log files whose live entries were rewritten (0: nothing worth collecting).
    pub files_collected: u64,
    /// Entries rewritten.
    pub entries_rewritten: u64,
    /// Value bytes rewritten.
    pub bytes_rewritten: u64,
    /// Files deleted (a collected file waits until no snapshot can reach it).
    pub files_deleted: u64,
}

/// What [`Db::rekey`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RekeyReport {
    /// Compaction tasks run to rewrite old tables.
    pub tasks: u64,
    /// Bytes of tables and values rewritten.
    pub bytes_rewritten: u64,
    /// Value-log files collected because they held entries under old keys.
    pub vlog_files: u64,
    /// Key ids live files use afterwards.
    pub keys_in_use: Vec<u32>,
}

/// What [`verify_store`] and [`Db::verify`] checked.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Tables read.
    pub tables: u64,
    /// Bytes of tables read.
    pub bytes: u64,
    /// Table entries authenticated.
    pub entries: u64,
    /// WAL files read.
    pub wal_files: u64,
    /// WAL records authenticated.
    pub wal_records: u64,
    /// Value-log files read.
    pub vlog_files: u64,
    /// Value-log entries authenticated.
    pub vlog_entries: u64,
    /// Every file read and authenticated (key registry, manifest, tables, logs). Files in
    /// the directory but not listed are not part of the store's state (for example a table
    /// left by an interrupted compaction; the next open removes it).
    pub files: Vec<String>,
}

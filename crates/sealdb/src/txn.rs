//! Transactions, write batches and iterators: the public face of MVCC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::db::{make_record, validate_key, validate_value, Db};
use crate::entry::{Kind, Record};
use crate::iter::{prefix_successor, Bounds, Merge, SnapshotView, PENDING_TS};
use crate::keys::now_secs;
use crate::mvcc::{fingerprint, ReadMark};
use crate::{Error, Result};

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    value: Vec<u8>,
    expires_at: u64,
}

/// A transaction: reads see a snapshot taken at its start plus its own writes; a read-write
/// transaction commits only if no key it read was written by a transaction that committed
/// after its start (serializable snapshot isolation). Dropping it without commit discards it.
pub struct Txn<'db> {
    db: &'db Db,
    mark: Arc<ReadMark>,
    writable: bool,
    done: bool,
    pending: BTreeMap<Vec<u8>, Pending>,
    reads: Arc<Mutex<Vec<u64>>>,
    sync: bool,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("read_ts", &self.mark.read_ts)
            .field("writable", &self.writable)
            .field("pending_writes", &self.pending.len())
            .finish()
    }
}

impl<'db> Txn<'db> {
    pub(crate) fn new(db: &'db Db, writable: bool) -> Self {
        Txn {
            mark: Arc::new(db.inner.oracle.begin_read()),
            db,
            writable,
            done: false,
            pending: BTreeMap::new(),
            reads: Arc::new(Mutex::new(Vec::new())),
            sync: false,
        }
    }

    /// The snapshot timestamp this transaction reads at.
    pub fn read_ts(&self) -> u64 {
        self.mark.read_ts
    }

    /// Reads `key` as of the snapshot, including this transaction's own writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        if let Some(p) = self.pending.get(key) {
            let live = p.kind == Kind::Put && (p.expires_at == 0 || p.expires_at > now_secs());
            return Ok(live.then(|| p.value.clone()));
        }
        if self.writable {
            self.reads.lock().push(fingerprint(key));
        }
        self.db.inner.check()?;
        Ok(self
            .db
            .inner
            .get_at(key, self.mark.read_ts)?
            .map(|r| r.value))
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(key, Kind::Put, value, 0)
    }

    /// Sets `key` to `value`, to read as absent after `ttl` (whole seconds, rounded up).
    pub fn set_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        self.write(
            key,
            Kind::Put,
            value,
            now_secs().saturating_add(secs.max(1)),
        )
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.write(key, Kind::Delete, &[], 0)
    }

    /// Makes this commit durable (fsync) even if the store's `sync_writes` is off.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn write(&mut self, key: &[u8], kind: Kind, value: &[u8], expires_at: u64) -> Result<()> {
        self.check_open()?;
        if !self.writable {
            return Err(Error::TxnState("read-only"));
        }
        validate_key(key)?;
        validate_value(value)?;
        self.pending.insert(
            key.to_vec(),
            Pending {
                kind,
                value: value.to_vec(),
                expires_at,
            },
        );
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.done {
            Err(Error::TxnState("finished"))
        } else {
            Ok(())
        }
    }

    /// Iterates over keys as of the snapshot, including this transaction's own writes.
    /// In a read-write transaction every key returned counts as read for conflict checks.
    pub fn iter(&self, opts: IterOptions) -> Result<Iter> {
        self.check_open()?;
        self.db.inner.check()?;
        let pending = self
            .pending
            .iter()
            .map(|(k, p)| Record {
                key: k.clone(),
                ts: PENDING_TS,
                kind: p.kind,
                expires_at: p.expires_at,
                value: p.value.clone(),
            })
            .collect();
        let reads = self.writable.then(|| self.reads.clone());
        self.db
            .inner
            .iter_at(self.mark.clone(), opts, pending, reads)
    }

    /// Commits the writes. Fails with [`Error::Conflict`] if a key this transaction read was
    /// changed by a transaction that committed after this one started.
    pub fn commit(mut self) -> Result<()> {
        self.check_open()?;
        self.done = true;
        if self.pending.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(k, p)| Record {
                key: k,
                ts: 0,
                kind: p.kind,
                expires_at: p.expires_at,
                value: p.value,
            })
            .collect();
        let reads = self.reads.lock().clone();
        self.db
            .inner
            .commit(records, Some((self.mark.read_ts, &reads)), self.sync)?;
        Ok(())
    }

    /// Discards the transaction (the same as dropping it).
    pub fn discard(mut self) {
        self.done = true;
    }
}

/// Blind writes for bulk loading: no reads, no conflict checks. Entries are committed in
/// chunks (each chunk atomic, one WAL chunk each) as the batch grows, and the rest on
/// [`WriteBatch::commit`]. The batch as a whole is not atomic.
pub struct WriteBatch<'db> {
    db: &'db Db,
    records: Vec<Record>,
    bytes: usize,
    sync: bool,
}

impl std::fmt::Debug for WriteBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("pending", &self.records.len())
            .finish()
    }
}

/// Pending bytes at which a write batch commits a chunk.
const BATCH_CHUNK_BYTES: usize = 4 << 20;

impl<'db> WriteBatch<'db> {
    pub(crate) fn new(db: &'db Db) -> Self {
        WriteBatch {
            db,
            records: Vec::new(),
            bytes: 0,
            sync: false,
        }
    }

    /// Makes each chunk durable (fsync) even if the store's `sync_writes` is off.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.add(key, Kind::Put, value, 0)
    }

    /// Sets `key` to `value` with a time to live.
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        self.add(
            key,
            Kind::Put,
            value,
            now_secs().saturating_add(secs.max(1)),
        )
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.add(key, Kind::Delete, &[], 0)
    }

    fn add(&mut self, key: &[u8], kind: Kind, value: &[u8], expires_at: u64) -> Result<()> {
        validate_key(key)?;
        validate_value(value)?;
        self.bytes += key.len() + value.len() + 24;
        self.records.push(make_record(key, kind, value, expires_at));
        if self.bytes >= BATCH_CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<()> {
        let mut records = std::mem::take(&mut self.records);
        self.bytes = 0;
        // Within one commit all entries share a timestamp: the last write of a key wins.
        let mut seen = std::collections::HashSet::new();
        if records.len() > 1 {
            let mut dedup: Vec<Record> = records
                .drain(..)
                .rev()
                .filter(|r| seen.insert(r.key.clone()))
                .collect();
            dedup.reverse();
            records = dedup;
        }
        self.db.inner.commit(records, None, self.sync)?;
        Ok(())
    }

    /// Commits what is pending.
    pub fn commit(mut self) -> Result<()> {
        self.flush_chunk()
    }
}

/// Options of an iteration.
#[derive(Debug, Clone)]
pub struct IterOptions {
    /// Only keys starting with this prefix.
    pub prefix: Option<Vec<u8>>,
    /// Start at this key (inclusive; for reverse iteration, the largest key returned).
    pub start: Option<Vec<u8>>,
    /// Iterate from the largest key down.
    pub reverse: bool,
    /// Keep blocks read from disk in the block cache (default true). Set false for bulk
    /// scans, so that they do not evict the blocks point reads need.
    pub fill_cache: bool,
}

impl Default for IterOptions {
    fn default() -> Self {
        IterOptions {
            prefix: None,
            start: None,
            reverse: false,
            fill_cache: true,
        }
    }
}

impl IterOptions {
    /// All keys with `prefix`, ascending.
    pub fn prefix(prefix: &[u8]) -> Self {
        IterOptions {
            prefix: Some(prefix.to_vec()),
            ..Default::default()
        }
    }

    /// Iterate in descending key order.
    pub fn reversed(mut self) -> Self {
        self.reverse = true;
        self
    }

    pub(crate) fn bounds(&self) -> Bounds {
        let mut lower = self.prefix.clone();
        let mut upper = self.prefix.as_deref().and_then(prefix_successor);
        if let Some(s) = &self.start {
            if self.reverse {
                // Keys <= start: the exclusive bound is start followed by a zero byte.
                let mut u = s.clone();
                u.push(0);
                if upper.as_ref().is_none_or(|cur| &u < cur) {
                    upper = Some(u);
                }
            } else if lower.as_ref().is_none_or(|cur| s > cur) {
                lower = Some(s.clone());
            }
        }
        Bounds {
            lower,
            upper,
            reverse: self.reverse,
            fill_cache: self.fill_cache,
        }
    }
}

/// One entry returned by an iterator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Commit timestamp of this version (`u64::MAX` for the transaction's own writes).
    pub version: u64,
    /// Unix seconds at which it expires, if it has a TTL.
    pub expires_at: Option<u64>,
}

/// An iterator over a snapshot. Yields `Result<KeyValue>`: an integrity error ends the
/// iteration (no further items are returned after an error).
pub struct Iter {
    view: SnapshotView,
    /// Follows value-log pointers.
    inner: Arc<crate::db::Inner>,
    _mark: Arc<ReadMark>,
    reads: Option<Arc<Mutex<Vec<u64>>>>,
    failed: bool,
}

impl std::fmt::Debug for Iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Iter")
    }
}

impl Iter {
    pub(crate) fn new(
        merge: Merge,
        mark: Arc<ReadMark>,
        now: u64,
        reads: Option<Arc<Mutex<Vec<u64>>>>,
        inner: Arc<crate::db::Inner>,
    ) -> Self {
        Iter {
            view: SnapshotView::new(merge, mark.read_ts, now),
            inner,
            _mark: mark,
            reads,
            failed: false,
        }
    }
}

impl Iterator for Iter {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.view.next_visible();
        match next.and_then(|r| r.map(|r| self.inner.resolve(r)).transpose()) {
            Ok(Some(r)) => {
                if let Some(reads) = &self.reads {
                    reads.lock().push(fingerprint(&r.key));
                }
                Some(Ok(KeyValue {
                    key: r.key,
                    value: r.value,
                    version: r.ts,
                    expires_at: (r.expires_at != 0).then_some(r.expires_at),
                }))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

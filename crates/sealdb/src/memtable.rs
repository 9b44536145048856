//! The memtable: a concurrent skiplist of versioned entries, paired with one WAL file.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;

use crate::entry::{InternalKey, Kind, Record, RecordRef};

/// Value side of a skiplist entry.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) kind: Kind,
    pub(crate) expires_at: u64,
    pub(crate) value: Vec<u8>,
}

/// Per-entry bookkeeping counted against the memtable budget (node, allocations).
const ENTRY_OVERHEAD: usize = 96;

pub(crate) struct Memtable {
    map: SkipMap<InternalKey, Slot>,
    size: AtomicUsize,
    max_ts: AtomicU64,
    /// Number of the WAL file holding this memtable's entries.
    pub(crate) wal_no: u64,
    /// Data keys the WAL's chunks are sealed under.
    wal_keys: parking_lot::Mutex<Vec<u32>>,
}

impl Memtable {
    pub(crate) fn new(wal_no: u64) -> Self {
        Memtable {
            map: SkipMap::new(),
            size: AtomicUsize::new(0),
            max_ts: AtomicU64::new(0),
            wal_no,
            wal_keys: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Removes every entry with a timestamp at or above `ts`; returns how many.
    pub(crate) fn remove_from_ts(&self, ts: u64) -> usize {
        let doomed: Vec<InternalKey> = self
            .map
            .iter()
            .filter(|e| e.key().ts >= ts)
            .map(|e| e.key().clone())
            .collect();
        for k in &doomed {
            self.map.remove(k);
        }
        doomed.len()
    }

    /// Records that the WAL now also holds chunks sealed under `key_id`.
    pub(crate) fn note_wal_key(&self, key_id: u32) {
        let mut keys = self.wal_keys.lock();
        if !keys.contains(&key_id) {
            keys.push(key_id);
        }
    }

    pub(crate) fn wal_key_ids(&self) -> Vec<u32> {
        self.wal_keys.lock().clone()
    }

    pub(crate) fn insert(&self, r: Record) {
        self.size.fetch_add(
            r.key.len() + r.value.len() + ENTRY_OVERHEAD,
            Ordering::Relaxed,
        );
        self.max_ts.fetch_max(r.ts, Ordering::Relaxed);
        self.map.insert(
            InternalKey::new(r.key, r.ts),
            Slot {
                kind: r.kind,
                expires_at: r.expires_at,
                value: r.value,
            },
        );
    }

    /// Approximate memory used, in bytes.
    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn max_ts(&self) -> u64 {
        self.max_ts.load(Ordering::Relaxed)
    }

    /// The newest version of `key` with timestamp at most `read_ts`.
    pub(crate) fn get(&self, key: &[u8], read_ts: u64) -> Option<Record> {
        let probe = InternalKey::new(key.to_vec(), read_ts);
        let e = self.map.lower_bound(Bound::Included(&probe))?;
        (e.key().key == key).then(|| to_record(e.key(), e.value()))
    }

    /// Up to `max` entries in internal order after `after` (exclusive), or from the start.
    /// With `reverse`, the entries before `after`, in reverse internal order.
    pub(crate) fn batch(
        &self,
        from: Bound<&InternalKey>,
        reverse: bool,
        max: usize,
        out: &mut Vec<Record>,
    ) {
        if reverse {
            for e in self.map.range((Bound::Unbounded, from)).rev().take(max) {
                out.push(to_record(e.key(), e.value()));
            }
        } else {
            for e in self.map.range((from, Bound::Unbounded)).take(max) {
                out.push(to_record(e.key(), e.value()));
            }
        }
    }

    /// Calls `f` on every entry in internal order, without copying (for flushing).
    pub(crate) fn for_each<E>(
        &self,
        mut f: impl FnMut(RecordRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for e in self.map.iter() {
            let (k, s) = (e.key(), e.value());
            f(RecordRef {
                key: &k.key,
                ts: k.ts,
                kind: s.kind,
                expires_at: s.expires_at,
                value: &s.value,
            })?;
        }
        Ok(())
    }
}

fn to_record(k: &InternalKey, s: &Slot) -> Record {
    Record {
        key: k.key.clone(),
        ts: k.ts,
        kind: s.kind,
        expires_at: s.expires_at,
        value: s.value.clone(),
    }
}

//! The oracle: timestamps, live snapshots (the watermark) and commit-time conflict checks for
//! serializable snapshot isolation, as in Badger.
//!
//! Invariants:
//! - `visible` is the highest commit timestamp whose writes are all in the memtable; a new
//!   transaction reads at `visible`, so it sees whole commits only.
//! - A transaction that read key K at `read_ts` cannot commit if a transaction with commit
//!   timestamp > `read_ts` wrote K (checked on 64-bit key fingerprints: a fingerprint
//!   collision can only cause a spurious conflict, never a missed one).
//! - Committed write sets are kept while a live snapshot older than them exists.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) fn fingerprint(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[derive(Default)]
struct State {
    next_ts: u64,
    committed: VecDeque<(u64, Vec<u64>)>,
    readers: BTreeMap<u64, usize>,
}

pub(crate) struct Oracle {
    state: Mutex<State>,
    visible: AtomicU64,
}

/// A registered snapshot; deregistered on drop.
pub(crate) struct ReadMark {
    oracle: Arc<Oracle>,
    pub(crate) read_ts: u64,
}

impl Drop for ReadMark {
    fn drop(&mut self) {
        self.oracle.end_read(self.read_ts);
    }
}

impl Oracle {
    pub(crate) fn new(last_ts: u64) -> Arc<Self> {
        Arc::new(Oracle {
            state: Mutex::new(State {
                next_ts: last_ts + 1,
                ..State::default()
            }),
            visible: AtomicU64::new(last_ts),
        })
    }

    pub(crate) fn begin_read(self: &Arc<Self>) -> ReadMark {
        let mut st = self.state.lock();
        let read_ts = self.visible.load(Ordering::Acquire);
        *st.readers.entry(read_ts).or_insert(0) += 1;
        ReadMark {
            oracle: self.clone(),
            read_ts,
        }
    }

    fn end_read(&self, read_ts: u64) {
        let mut st = self.state.lock();
        if let Some(n) = st.readers.get_mut(&read_ts) {
            *n -= 1;
            if *n == 0 {
                st.readers.remove(&read_ts);
            }
        }
        Self::trim(&mut st);
    }

    fn trim(st: &mut State) {
        let oldest = st.readers.keys().next().copied().unwrap_or(u64::MAX);
        while st.committed.front().is_some_and(|(ts, _)| *ts <= oldest) {
            st.committed.pop_front();
        }
    }

    /// The oldest timestamp any live snapshot reads at (or the visible one if none).
    pub(crate) fn watermark(&self) -> u64 {
        let st = self.state.lock();
        st.readers
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.visible.load(Ordering::Acquire))
    }

    /// Checks conflicts and allocates a commit timestamp. Callers hold the commit lock, so
    /// timestamps are applied in order.
    pub(crate) fn prepare_commit(&self, reads: Option<(u64, &[u64])>) -> Option<u64> {
        let mut st = self.state.lock();
        if let Some((read_ts, reads)) = reads {
            if !reads.is_empty() {
                for (ts, writes) in st.committed.iter().rev() {
                    if *ts <= read_ts {
                        break;
                    }
                    if writes.iter().any(|w| reads.contains(w)) {
                        return None;
                    }
                }
            }
        }
        let ts = st.next_ts;
        st.next_ts += 1;
        Some(ts)
    }

    /// Publishes a commit applied to the memtable.
    pub(crate) fn finish_commit(&self, ts: u64, writes: Vec<u64>) {
        let mut st = self.state.lock();
        if !st.readers.is_empty() && !writes.is_empty() {
            st.committed.push_back((ts, writes));
        }
        self.visible.store(ts, Ordering::Release);
    }

    /// Gives back a timestamp allocated for a commit that failed before it was applied.
    pub(crate) fn abandon_commit(&self, ts: u64) {
        self.visible
            .fetch_max(ts.saturating_sub(1), Ordering::Release);
    }

    pub(crate) fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_after_read_conflicts_only_for_overlapping_keys() {
        let o = Oracle::new(0);
        let t1 = o.begin_read();
        let t2 = o.begin_read();
        let ts = o
            .prepare_commit(Some((t1.read_ts, &[fingerprint(b"x")])))
            .unwrap();
        o.finish_commit(ts, vec![fingerprint(b"y")]);
        assert!(o
            .prepare_commit(Some((t2.read_ts, &[fingerprint(b"y")])))
            .is_none());
        assert!(o
            .prepare_commit(Some((t2.read_ts, &[fingerprint(b"z")])))
            .is_some());
        let t3 = o.begin_read();
        assert_eq!(t3.read_ts, ts);
        assert_eq!(o.watermark(), 0);
        drop((t1, t2));
        assert_eq!(o.watermark(), ts);
    }
}

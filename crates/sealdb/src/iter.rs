//! Iteration: sources (memtable, runs of tables, a transaction's pending writes), a merge
//! over them in either direction, and the snapshot view that yields one visible version per
//! key.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use crate::entry::{cmp_internal, InternalKey, Record};
use crate::memtable::Memtable;
use crate::table::{Block, Table};
use crate::Result;

/// Key range and direction of an iteration.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    /// Inclusive lower bound on user keys.
    pub(crate) lower: Option<Vec<u8>>,
    /// Exclusive upper bound on user keys.
    pub(crate) upper: Option<Vec<u8>>,
    pub(crate) reverse: bool,
    /// Insert blocks read from disk into the block cache.
    pub(crate) fill_cache: bool,
}

impl Bounds {
    fn above_lower(&self, key: &[u8]) -> bool {
        self.lower.as_deref().is_none_or(|l| key >= l)
    }
    fn below_upper(&self, key: &[u8]) -> bool {
        self.upper.as_deref().is_none_or(|u| key < u)
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` if there is none.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// A positioned stream of records in internal order (or its reverse).
pub(crate) trait Source: Send {
    fn peek(&self) -> Option<&Record>;
    /// Returns the current record and moves on.
    fn next_record(&mut self) -> Result<Option<Record>>;
}

/// Records of one memtable, fetched in small batches.
pub(crate) struct MemSource {
    mem: Arc<Memtable>,
    bounds: Bounds,
    buf: Vec<Record>,
    pos: usize,
    exhausted: bool,
}

const MEM_BATCH: usize = 128;

impl MemSource {
    pub(crate) fn new(mem: Arc<Memtable>, bounds: Bounds) -> Self {
        let mut s = MemSource {
            mem,
            bounds,
            buf: Vec::new(),
            pos: 0,
            exhausted: false,
        };
        s.fill(None);
        s
    }

    fn fill(&mut self, after: Option<InternalKey>) {
        self.buf.clear();
        self.pos = 0;
        let start;
        let from = match (&after, self.bounds.reverse) {
            (Some(k), _) => Bound::Excluded(k),
            (None, false) => match &self.bounds.lower {
                Some(l) => {
                    start = InternalKey::new(l.clone(), u64::MAX);
                    Bound::Included(&start)
                }
                None => Bound::Unbounded,
            },
            (None, true) => match &self.bounds.upper {
                Some(u) => {
                    start = InternalKey::new(u.clone(), u64::MAX);
                    Bound::Excluded(&start)
                }
                None => Bound::Unbounded,
            },
        };
        self.mem
            .batch(from, self.bounds.reverse, MEM_BATCH, &mut self.buf);
        let b = &self.bounds;
        if let Some(cut) = self.buf.iter().position(|r| {
            if b.reverse {
                !b.above_lower(&r.key)
            } else {
                !b.below_upper(&r.key)
            }
        }) {
            self.buf.truncate(cut);
            self.exhausted = true;
        }
        if self.buf.len() < MEM_BATCH {
            self.exhausted = true;
        }
    }
}

impl Source for MemSource {
    fn peek(&self) -> Option<&Record> {
        self.buf.get(self.pos)
    }
    fn next_record(&mut self) -> Result<Option<Record>> {
        let Some(r) = self.buf.get_mut(self.pos) else {
            return Ok(None);
        };
        let r = std::mem::replace(
            r,
            Record {
                key: Vec::new(),
                ts: 0,
                kind: crate::entry::Kind::Delete,
                expires_at: 0,
                value: Vec::new(),
            },
        );
        self.pos += 1;
        if self.pos == self.buf.len() && !self.exhausted {
            let after = InternalKey::new(r.key.clone(), r.ts);
            self.fill(Some(after));
        }
        Ok(Some(r))
    }
}

/// Records of a run of tables with disjoint, ordered key ranges (one L0 table, or a level).
pub(crate) struct RunSource {
    tables: Vec<Arc<Table>>,
    bounds: Bounds,
    /// (table, block, entry) of the current record.
    ti: usize,
    bi: usize,
    pos: usize,
    block: Option<Arc<Block>>,
    current: Option<Record>,
}

impl RunSource {
    pub(crate) fn new(tables: Vec<Arc<Table>>, bounds: Bounds) -> Result<Self> {
        let mut s = RunSource {
            tables,
            bounds,
            ti: 0,
            bi: 0,
            pos: 0,
            block: None,
            current: None,
        };
        if s.bounds.reverse {
            s.seek_last()?;
        } else {
            s.seek_first()?;
        }
        Ok(s)
    }

    fn load(&mut self) -> Result<Arc<Block>> {
        let b = self.tables[self.ti].block_with(self.bi, self.bounds.fill_cache)?;
        self.block = Some(b.clone());
        Ok(b)
    }

    fn seek_first(&mut self) -> Result<()> {
        let lower = self.bounds.lower.clone().unwrap_or_default();
        self.ti = self.tables.partition_point(|t| t.meta.largest < lower);
        if self.ti < self.tables.len() {
            let t = &self.tables[self.ti];
            self.bi = t.block_for_key(&lower);
            if self.bi < t.block_count() {
                let b = self.load()?;
                self.pos = b
                    .seek_key(&lower)
                    .map_err(|d| self.tables[self.ti].decode_err(self.bi, d))?;
            }
        }
        self.settle_forward()
    }

    /// Moves forward past exhausted blocks and tables, then reads the current record.
    fn settle_forward(&mut self) -> Result<()> {
        loop {
            if self.ti >= self.tables.len() {
                self.current = None;
                return Ok(());
            }
            if self.bi >= self.tables[self.ti].block_count() {
                self.ti += 1;
                self.bi = 0;
                self.pos = 0;
                self.block = None;
                continue;
            }
            let b = match &self.block {
                Some(b) => b.clone(),
                None => self.load()?,
            };
            if self.pos >= b.len() {
                self.bi += 1;
                self.pos = 0;
                self.block = None;
                continue;
            }
            return self.read_current(&b);
        }
    }

    fn seek_last(&mut self) -> Result<()> {
        let n = match &self.bounds.upper {
            Some(u) => self.tables.partition_point(|t| t.meta.smallest < *u),
            None => self.tables.len(),
        };
        if n == 0 {
            self.current = None;
            return Ok(());
        }
        self.ti = n - 1;
        let t = self.tables[self.ti].clone();
        let bi = match &self.bounds.upper {
            Some(u) => t.block_for_key(u),
            None => t.block_count(),
        };
        if bi >= t.block_count() {
            self.bi = t.block_count() - 1;
            let b = self.load()?;
            self.pos = b.len() - 1;
            return self.read_current(&b);
        }
        self.bi = bi;
        let b = self.load()?;
        let upper = self.bounds.upper.clone().unwrap_or_default();
        let p = b.seek_key(&upper).map_err(|d| t.decode_err(bi, d))?;
        if p == 0 {
            self.step_back()
        } else {
            self.pos = p - 1;
            self.read_current(&b)
        }
    }

    /// Moves to the entry before the current position.
    fn step_back(&mut self) -> Result<()> {
        if self.pos > 0 {
            self.pos -= 1;
        } else if self.bi > 0 {
            self.bi -= 1;
            self.load()?;
            self.pos = usize::MAX;
        } else if self.ti > 0 {
            self.ti -= 1;
            self.bi = self.tables[self.ti].block_count() - 1;
            self.load()?;
            self.pos = usize::MAX;
        } else {
            self.current = None;
            return Ok(());
        }
        let b = self.block.clone().expect("block loaded");
        if self.pos == usize::MAX {
            self.pos = b.len() - 1;
        }
        self.read_current(&b)
    }

    fn read_current(&mut self, b: &Block) -> Result<()> {
        let r = b
            .get(self.pos)
            .map_err(|d| self.tables[self.ti].decode_err(self.bi, d))?;
        let inside = if self.bounds.reverse {
            self.bounds.above_lower(r.key)
        } else {
            self.bounds.below_upper(r.key)
        };
        self.current = inside.then(|| r.to_owned());
        Ok(())
    }
}

impl Source for RunSource {
    fn peek(&self) -> Option<&Record> {
        self.current.as_ref()
    }
    fn next_record(&mut self) -> Result<Option<Record>> {
        let Some(r) = self.current.take() else {
            return Ok(None);
        };
        if self.bounds.reverse {
            self.step_back()?;
        } else {
            self.pos += 1;
            self.settle_forward()?;
        }
        Ok(Some(r))
    }
}

/// Records already in memory, in order (a transaction's pending writes).
pub(crate) struct VecSource {
    records: std::vec::IntoIter<Record>,
    current: Option<Record>,
}

impl VecSource {
    pub(crate) fn new(records: Vec<Record>) -> Self {
        let mut records = records.into_iter();
        let current = records.next();
        VecSource { records, current }
    }
}

impl Source for VecSource {
    fn peek(&self) -> Option<&Record> {
        self.current.as_ref()
    }
    fn next_record(&mut self) -> Result<Option<Record>> {
        let r = self.current.take();
        self.current = self.records.next();
        Ok(r)
    }
}

/// Merges sources; yields records in internal order (forward) or by descending key
/// (reverse; versions of one key then come in no particular order).
pub(crate) struct Merge {
    sources: Vec<Box<dyn Source>>,
    reverse: bool,
}

impl Merge {
    pub(crate) fn new(sources: Vec<Box<dyn Source>>, reverse: bool) -> Self {
        Merge { sources, reverse }
    }

    fn best(&self) -> Option<usize> {
        let mut best: Option<(usize, &Record)> = None;
        for (i, s) in self.sources.iter().enumerate() {
            let Some(r) = s.peek() else { continue };
            let better = match best {
                None => true,
                Some((_, b)) => {
                    let ord = cmp_internal(&r.key, r.ts, &b.key, b.ts);
                    if self.reverse {
                        r.key > b.key
                    } else {
                        ord == Ordering::Less
                    }
                }
            };
            if better {
                best = Some((i, r));
            }
        }
        best.map(|(i, _)| i)
    }

    pub(crate) fn peek(&self) -> Option<&Record> {
        self.best().and_then(|i| self.sources[i].peek())
    }

    pub(crate) fn next_record(&mut self) -> Result<Option<Record>> {
        match self.best() {
            Some(i) => self.sources[i].next_record(),
            None => Ok(None),
        }
    }
}

/// Timestamp given to a transaction's own pending writes: they win over every commit.
pub(crate) const PENDING_TS: u64 = u64::MAX;

/// Yields, for each key in range, the newest version visible at `read_ts`, if it is live.
pub(crate) struct SnapshotView {
    merge: Merge,
    read_ts: u64,
    now: u64,
}

impl SnapshotView {
    pub(crate) fn new(merge: Merge, read_ts: u64, now: u64) -> Self {
        SnapshotView {
            merge,
            read_ts,
            now,
        }
    }

    pub(crate) fn next_visible(&mut self) -> Result<Option<Record>> {
        loop {
            let Some(first) = self.merge.next_record()? else {
                return Ok(None);
            };
            let visible = |r: &Record, read_ts| r.ts <= read_ts || r.ts == PENDING_TS;
            let mut chosen = visible(&first, self.read_ts).then_some(first.clone());
            while let Some(r) = self.merge.peek() {
                if r.key != first.key {
                    break;
                }
                let r = self.merge.next_record()?.expect("peeked");
                if visible(&r, self.read_ts) && chosen.as_ref().is_none_or(|c| r.ts > c.ts) {
                    chosen = Some(r);
                }
            }
            if let Some(c) = chosen {
                if c.is_live(self.now) {
                    return Ok(Some(c));
                }
            }
        }
    }
}

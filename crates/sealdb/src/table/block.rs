//! A data block's plaintext: entries, then `u32` offsets of each entry, then `u32` count.
//! Entries are in internal order; lookups binary-search the offsets.

use std::cmp::Ordering;

use crate::codec::{DecodeError, Reader};
use crate::entry::{self, cmp_internal, RecordRef};

/// A decoded (authenticated) data block.
pub(crate) struct Block {
    data: Vec<u8>,
    /// Start of the offsets array inside `data`.
    entries_end: usize,
    count: usize,
}

impl Block {
    /// Checks the block's structure; entries are decoded (and checked) when read.
    pub(crate) fn decode(data: Vec<u8>) -> Result<Block, DecodeError> {
        let bad = |what| DecodeError { at: 0, what };
        let n = data.len();
        if n < 4 {
            return Err(bad("block shorter than its entry count"));
        }
        let count =
            u32::from_le_bytes([data[n - 4], data[n - 3], data[n - 2], data[n - 1]]) as usize;
        let entries_end = count
            .checked_mul(4)
            .and_then(|b| n.checked_sub(4 + b))
            .ok_or(bad("block entry count larger than the block"))?;
        if count == 0 {
            return Err(bad("empty block"));
        }
        let block = Block {
            data,
            entries_end,
            count,
        };
        let mut prev = None;
        for i in 0..count {
            let off = block.offset(i);
            if off >= entries_end || prev.is_some_and(|p| off <= p) {
                return Err(bad("block entry offset out of order or out of range"));
            }
            prev = Some(off);
        }
        Ok(block)
    }

    fn offset(&self, i: usize) -> usize {
        let p = self.entries_end + 4 * i;
        u32::from_le_bytes([
            self.data[p],
            self.data[p + 1],
            self.data[p + 2],
            self.data[p + 3],
        ]) as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Decodes entry `i` (`i < len()`).
    pub(crate) fn get(&self, i: usize) -> Result<RecordRef<'_>, DecodeError> {
        let start = self.offset(i);
        let end = if i + 1 < self.count {
            self.offset(i + 1)
        } else {
            self.entries_end
        };
        let mut r = Reader::new(&self.data[start..end]);
        let rec = entry::decode(&mut r).map_err(|e| DecodeError {
            at: start + e.at,
            what: e.what,
        })?;
        if !r.is_empty() {
            return Err(DecodeError {
                at: start,
                what: "entry shorter than its slot",
            });
        }
        Ok(rec)
    }

    /// First index whose entry is not less than the probe under `cmp`
    /// (`cmp(entry)` is `Less` while the entry lies before the probe).
    pub(crate) fn partition(
        &self,
        mut cmp: impl FnMut(RecordRef<'_>) -> Ordering,
    ) -> Result<usize, DecodeError> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if cmp(self.get(mid)?) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// First entry with user key >= `key`.
    pub(crate) fn seek_key(&self, key: &[u8]) -> Result<usize, DecodeError> {
        self.partition(|r| r.key.cmp(key))
    }

    /// First entry at or after (key, ts) in internal order.
    pub(crate) fn seek_internal(&self, key: &[u8], ts: u64) -> Result<usize, DecodeError> {
        self.partition(|r| cmp_internal(r.key, r.ts, key, ts))
    }

    /// Bytes held in memory (for the cache's weigher).
    pub(crate) fn weight(&self) -> usize {
        self.data.capacity() + 64
    }
}

/// Builds a block's plaintext.
#[derive(Default)]
pub(crate) struct BlockBuilder {
    data: Vec<u8>,
    offsets: Vec<u32>,
}

impl BlockBuilder {
    pub(crate) fn add(&mut self, r: RecordRef<'_>) {
        self.offsets.push(self.data.len() as u32);
        entry::encode(r, &mut self.data);
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
    pub(crate) fn estimated_size(&self) -> usize {
        self.data.len() + 4 * self.offsets.len() + 4
    }
    /// The plaintext; leaves the builder empty for the next block.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.data);
        for o in &self.offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        self.data.clear();
        self.offsets.clear();
    }
}

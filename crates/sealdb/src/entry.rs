//! The versioned entry every layer stores: user key, commit timestamp, kind, expiry, value.
//!
//! Internal order: user key ascending, then timestamp descending (newest version first), as
//! in Badger. One encoding serves WAL batches and table blocks:
//! `varint key_len ‖ key ‖ u64 ts ‖ u8 kind ‖ varint expires_at ‖ varint value_len ‖ value`.

use std::cmp::Ordering;

use crate::codec::{put_len_prefixed, put_varint, DecodeError, Reader};

/// Kind of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Put = 1,
    Delete = 2,
    /// The value is a value-log pointer (see `vlog::Pointer`).
    Pointer = 3,
}

/// One version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) key: Vec<u8>,
    pub(crate) ts: u64,
    pub(crate) kind: Kind,
    /// Unix seconds after which the entry reads as absent; 0 = never.
    pub(crate) expires_at: u64,
    pub(crate) value: Vec<u8>,
}

/// A record decoded in place (borrowing its bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) ts: u64,
    pub(crate) kind: Kind,
    pub(crate) expires_at: u64,
    pub(crate) value: &'a [u8],
}

impl RecordRef<'_> {
    pub(crate) fn to_owned(self) -> Record {
        Record {
            key: self.key.to_vec(),
            ts: self.ts,
            kind: self.kind,
            expires_at: self.expires_at,
            value: self.value.to_vec(),
        }
    }
}

impl Record {
    pub(crate) fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            key: &self.key,
            ts: self.ts,
            kind: self.kind,
            expires_at: self.expires_at,
            value: &self.value,
        }
    }

    /// Whether the entry reads as present at `now` (Unix seconds).
    pub(crate) fn is_live(&self, now: u64) -> bool {
        self.kind != Kind::Delete && (self.expires_at == 0 || self.expires_at > now)
    }
}

/// Compares two (key, ts) pairs in internal order.
pub(crate) fn cmp_internal(ak: &[u8], ats: u64, bk: &[u8], bts: u64) -> Ordering {
    ak.cmp(bk).then(bts.cmp(&ats))
}

pub(crate) fn encode(r: RecordRef<'_>, out: &mut Vec<u8>) {
    put_len_prefixed(out, r.key);
    out.extend_from_slice(&r.ts.to_le_bytes());
    out.push(r.kind as u8);
    put_varint(out, r.expires_at);
    put_len_prefixed(out, r.value);
}

pub(crate) fn decode<'a>(r: &mut Reader<'a>) -> Result<RecordRef<'a>, DecodeError> {
    let key = r.len_prefixed("entry key")?;
    let ts = r.u64("entry timestamp")?;
    let at = r.pos();
    let kind = match r.u8("entry kind")? {
        1 => Kind::Put,
        2 => Kind::Delete,
        3 => Kind::Pointer,
        _ => {
            return Err(DecodeError {
                at,
                what: "unknown entry kind",
            })
        }
    };
    let expires_at = r.varint("entry expiry")?;
    let value = r.len_prefixed("entry value")?;
    Ok(RecordRef {
        key,
        ts,
        kind,
        expires_at,
        value,
    })
}

/// A key's internal form in the memtable's skiplist. `head` holds the key's first 8 bytes
/// (big-endian, zero-padded) inline, so most comparisons during a skiplist search never
/// follow the pointer to the key's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InternalKey {
    head: u64,
    pub(crate) key: Vec<u8>,
    pub(crate) ts: u64,
}

impl InternalKey {
    pub(crate) fn new(key: Vec<u8>, ts: u64) -> Self {
        let mut h = [0u8; 8];
        let n = key.len().min(8);
        h[..n].copy_from_slice(&key[..n]);
        InternalKey {
            head: u64::from_be_bytes(h),
            key,
            ts,
        }
    }
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| cmp_internal(&self.key, self.ts, &other.key, other.ts))
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let r = Record {
            key: b"k".to_vec(),
            ts: 9,
            kind: Kind::Delete,
            expires_at: 77,
            value: vec![],
        };
        let mut b = Vec::new();
        encode(r.as_ref(), &mut b);
        let mut rd = Reader::new(&b);
        assert_eq!(decode(&mut rd).unwrap().to_owned(), r);
        assert!(rd.is_empty());
        assert_eq!(cmp_internal(b"a", 1, b"a", 2), Ordering::Greater);
        assert_eq!(cmp_internal(b"a", 5, b"b", 1), Ordering::Less);
        for cut in 0..b.len() {
            assert!(decode(&mut Reader::new(&b[..cut])).is_err());
        }
    }
}

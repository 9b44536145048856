//! Versions (the set of live tables per level) and the `MANIFEST` that records them.
//!
//! The manifest is one file replaced atomically on every change (temp file, fsync, rename,
//! fsync directory): a plaintext header and one sealed unit holding the whole state. A crash
//! leaves either the old or the new manifest, never a mix.
//!
//! Header (44 bytes): `magic "SEALMANI" ‖ u16 version ‖ u8 flags (1 = encrypted) ‖ u8 0 ‖
//! store id (16) ‖ u32 key id ‖ u64 generation ‖ u32 unit length`. The unit's place is
//! (Manifest, generation, 0).

use std::sync::Arc;

use crate::codec::{put_len_prefixed, put_varint, DecodeError, Reader};
use crate::fs::Storage;
use crate::keys::{FileKind, KeyRing, Place, StoreId, FORMAT_VERSION};
use crate::table::{Table, TableMeta};
use crate::vlog::{FileState, VlogFile};
use crate::{Error, Result};
use std::collections::BTreeMap;

pub(crate) const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MAGIC: &[u8; 8] = b"SEALMANI";
const HEADER_LEN: usize = 44;
/// Number of levels (L0 .. L6).
pub(crate) const NUM_LEVELS: usize = 7;

/// Writes `bytes` to `name` atomically: temp file, fsync, rename, fsync directory.
pub(crate) fn write_atomic(
    storage: &dyn Storage,
    name: &str,
    tmp: &str,
    bytes: &[u8],
) -> Result<()> {
    let mut f = storage.create(tmp).map_err(|e| Error::io(tmp, e))?;
    f.append(bytes).map_err(|e| Error::io(tmp, e))?;
    f.sync().map_err(|e| Error::io(tmp, e))?;
    drop(f);
    storage.rename(tmp, name).map_err(|e| Error::io(name, e))?;
    storage.sync_dir().map_err(|e| Error::io(".", e))
}

/// The durable state of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ManifestState {
    pub(crate) generation: u64,
    /// Next unused file number (WAL and table files share the sequence).
    pub(crate) next_file_no: u64,
    /// WAL files with a number >= this hold entries not yet in tables.
    pub(crate) log_no: u64,
    /// Highest commit timestamp contained in tables.
    pub(crate) last_ts: u64,
    pub(crate) levels: Vec<Vec<TableMeta>>,
    /// Key id the file read was sealed under (`None` for a state not read from disk).
    pub(crate) sealed_key_id: Option<u32>,
    /// Value-log files.
    pub(crate) vlogs: BTreeMap<u64, VlogFile>,
}

/// The plaintext header fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ManifestHeader {
    pub(crate) store_id: StoreId,
    pub(crate) encrypted: bool,
    key_id: u32,
    generation: u64,
    unit_len: u32,
}

pub(crate) fn decode_header(buf: &[u8]) -> Result<ManifestHeader> {
    let e = |d: DecodeError| d.into_error(MANIFEST, 0);
    let mut r = Reader::new(buf);
    if r.bytes(8, "magic").map_err(e)? != MAGIC {
        return Err(Error::format(
            MANIFEST,
            0,
            "bad magic (not a sealdb manifest)",
        ));
    }
    let version = r.u16("format version").map_err(e)?;
    if version != FORMAT_VERSION {
        return Err(Error::format(
            MANIFEST,
            8,
            format!("unsupported format version {version}"),
        ));
    }
    let flags = r.u8("flags").map_err(e)?;
    let reserved = r.u8("reserved").map_err(e)?;
    if flags > 1 || reserved != 0 {
        return Err(Error::format(MANIFEST, 10, "unknown flags"));
    }
    let store_id = r.array::<16>("store id").map_err(e)?;
    let key_id = r.u32("key id").map_err(e)?;
    let generation = r.u64("generation").map_err(e)?;
    let unit_len = r.u32("unit length").map_err(e)?;
    if r.remaining() != unit_len as usize {
        return Err(Error::format(
            MANIFEST,
            40,
            "unit length does not match the file size",
        ));
    }
    Ok(ManifestHeader {
        store_id,
        encrypted: flags == 1,
        key_id,
        generation,
        unit_len,
    })
}

pub(crate) fn write_manifest(
    storage: &dyn Storage,
    keys: &KeyRing,
    state: &ManifestState,
) -> Result<u32> {
    let mut body = Vec::new();
    put_varint(&mut body, state.next_file_no);
    put_varint(&mut body, state.log_no);
    put_varint(&mut body, state.last_ts);
    put_varint(&mut body, state.levels.len() as u64);
    for level in &state.levels {
        put_varint(&mut body, level.len() as u64);
        for t in level {
            put_varint(&mut body, t.file_no);
            put_varint(&mut body, t.size);
            put_varint(&mut body, u64::from(t.key_id));
            put_varint(&mut body, t.entries);
            put_len_prefixed(&mut body, &t.smallest);
            put_len_prefixed(&mut body, &t.largest);
            put_varint(&mut body, t.max_ts);
        }
    }
    put_varint(&mut body, state.vlogs.len() as u64);
    for (no, f) in &state.vlogs {
        put_varint(&mut body, *no);
        put_varint(&mut body, f.size);
        put_varint(&mut body, f.discard);
        body.push(match f.state {
            FileState::Live => 1,
            FileState::Deleting => 2,
        });
        body.push(u8::from(f.complete));
        put_varint(&mut body, f.key_ids.len() as u64);
        for k in &f.key_ids {
            put_varint(&mut body, u64::from(*k));
        }
    }
    let sealer = keys.active_sealer();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(u8::from(keys.is_encrypted()));
    out.push(0);
    out.extend_from_slice(&keys.store_id());
    out.extend_from_slice(&sealer.key_id().to_le_bytes());
    out.extend_from_slice(&state.generation.to_le_bytes());
    let unit_len = crate::keys::sealed_len(&sealer, body.len()) as u32;
    out.extend_from_slice(&unit_len.to_le_bytes());
    let place = Place {
        kind: FileKind::Manifest,
        file_no: state.generation,
        position: 0,
    };
    sealer.seal(place, &body, &mut out)?;
    write_atomic(storage, MANIFEST, MANIFEST_TMP, &out)?;
    Ok(sealer.key_id())
}

/// Writes the manifest of a new, empty store.
pub(crate) fn write_new_manifest(storage: &dyn Storage, keys: &KeyRing) -> Result<ManifestState> {
    let m = ManifestState {
        generation: 1,
        next_file_no: 1,
        log_no: 0,
        last_ts: 0,
        levels: vec![Vec::new(); NUM_LEVELS],
        sealed_key_id: None,
        vlogs: BTreeMap::new(),
    };
    write_manifest(storage, keys, &m)?;
    Ok(m)
}

/// Reads and authenticates the manifest.
pub(crate) fn read_manifest(storage: &dyn Storage, keys: &KeyRing) -> Result<ManifestState> {
    let mut buf = storage
        .read_all(MANIFEST)
        .map_err(|e| Error::io(MANIFEST, e))?;
    let h = decode_header(&buf)?;
    if h.store_id != keys.store_id() {
        return Err(Error::integrity(
            MANIFEST,
            12,
            "manifest belongs to another store",
        ));
    }
    if h.encrypted != keys.is_encrypted() {
        return Err(Error::integrity(
            MANIFEST,
            10,
            "manifest encryption flag does not match the key registry",
        ));
    }
    let sealer = keys.sealer_for(h.key_id).ok_or_else(|| {
        Error::integrity(
            MANIFEST,
            28,
            "manifest sealed under a key this store does not have",
        )
    })?;
    let place = Place {
        kind: FileKind::Manifest,
        file_no: h.generation,
        position: 0,
    };
    debug_assert_eq!(buf.len() - HEADER_LEN, h.unit_len as usize);
    let body = sealer.open(place, &mut buf[HEADER_LEN..]).ok_or_else(|| {
        Error::integrity(
            MANIFEST,
            HEADER_LEN as u64,
            "manifest failed authentication",
        )
    })?;
    let mut state = decode_body(body).map_err(|d| d.into_error(MANIFEST, HEADER_LEN as u64))?;
    state.generation = h.generation;
    state.sealed_key_id = Some(h.key_id);
    Ok(state)
}

pub(crate) fn decode_body(b: &[u8]) -> std::result::Result<ManifestState, DecodeError> {
    let mut r = Reader::new(b);
    let next_file_no = r.varint("next file number")?;
    let log_no = r.varint("log number")?;
    let last_ts = r.varint("last timestamp")?;
    let nlevels = r.varint("level count")?;
    if nlevels as usize != NUM_LEVELS {
        return Err(DecodeError {
            at: r.pos(),
            what: "unexpected level count",
        });
    }
    let mut levels = Vec::new();
    for _ in 0..nlevels {
        let n = r.varint("table count")?;
        let mut level = Vec::new();
        for _ in 0..n {
            level.push(TableMeta {
                file_no: r.varint("table file number")?,
                size: r.varint("table size")?,
                key_id: u32::try_from(r.varint("table key id")?).map_err(|_| DecodeError {
                    at: r.pos(),
                    what: "table key id",
                })?,
                entries: r.varint("table entry count")?,
                smallest: r.len_prefixed("smallest key")?.to_vec(),
                largest: r.len_prefixed("largest key")?.to_vec(),
                max_ts: r.varint("table max timestamp")?,
            });
        }
        levels.push(level);
    }
    let bad = |r: &Reader<'_>, what| DecodeError { at: r.pos(), what };
    let mut vlogs = BTreeMap::new();
    for _ in 0..r.varint("value-log file count")? {
        let no = r.varint("value-log file number")?;
        let size = r.varint("value-log file size")?;
        let discard = r.varint("value-log discard bytes")?;
        let state = match r.u8("value-log file state")? {
            1 => FileState::Live,
            2 => FileState::Deleting,
            _ => return Err(bad(&r, "unknown value-log file state")),
        };
        let complete = match r.u8("value-log completeness")? {
            0 => false,
            1 => true,
            _ => return Err(bad(&r, "bad value-log completeness flag")),
        };
        let mut key_ids = Vec::new();
        for _ in 0..r.varint("value-log key count")? {
            let k = r.varint("value-log key id")?;
            key_ids.push(u32::try_from(k).map_err(|_| bad(&r, "value-log key id"))?);
        }
        vlogs.insert(
            no,
            VlogFile {
                size,
                discard,
                key_ids,
                state,
                complete,
            },
        );
    }
    if !r.is_empty() {
        return Err(bad(&r, "trailing bytes in the manifest"));
    }
    Ok(ManifestState {
        generation: 0,
        next_file_no,
        log_no,
        last_ts,
        levels,
        sealed_key_id: None,
        vlogs,
    })
}

/// The live tables: L0 newest first (tables may overlap), L1.. sorted by key, disjoint.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) levels: Vec<Vec<Arc<Table>>>,
}

impl Version {
    pub(crate) fn empty() -> Self {
        Version {
            levels: vec![Vec::new(); NUM_LEVELS],
        }
    }

    pub(crate) fn metas(&self) -> Vec<Vec<TableMeta>> {
        self.levels
            .iter()
            .map(|l| l.iter().map(|t| t.meta.clone()).collect())
            .collect()
    }

    /// Sorts each level into its invariant order.
    pub(crate) fn normalize(&mut self) {
        self.levels[0].sort_by_key(|t| std::cmp::Reverse(t.meta.file_no));
        for level in self.levels.iter_mut().skip(1) {
            level.sort_by(|a, b| a.meta.smallest.cmp(&b.meta.smallest));
        }
    }

    pub(crate) fn all_tables(&self) -> impl Iterator<Item = &Arc<Table>> {
        self.levels.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemStorage;

    #[test]
    fn manifest_round_trip_and_tamper() {
        let s = MemStorage::new();
        let keys = KeyRing::plain([3; 16]);
        let mut state = ManifestState {
            generation: 4,
            next_file_no: 10,
            log_no: 8,
            last_ts: 99,
            levels: vec![Vec::new(); NUM_LEVELS],
            sealed_key_id: None,
            vlogs: BTreeMap::new(),
        };
        state.levels[1].push(TableMeta {
            file_no: 7,
            size: 100,
            key_id: 0,
            entries: 3,
            smallest: b"a".to_vec(),
            largest: b"z".to_vec(),
            max_ts: 99,
        });
        write_manifest(&s, &keys, &state).unwrap();
        state.sealed_key_id = Some(0);
        assert_eq!(read_manifest(&s, &keys).unwrap(), state);
        let len = s.read_all(MANIFEST).unwrap().len();
        for i in 0..len {
            let t = s.crash_image(|_, _| 0);
            t.with_file_mut(MANIFEST, |d| d[i] ^= 0x04).unwrap();
            assert!(read_manifest(&t, &keys).is_err(), "flip at {i} accepted");
        }
    }
}

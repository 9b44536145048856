//! The value log (WiscKey, Badger): values of at least `value_threshold` bytes live in
//! append-only `NNNNNN.vlog` files and the LSM tree holds a 20-byte pointer to them, which
//! cuts write amplification for large values.
//!
//! A value-log file is a sequence of chunks (see `chunk`), each sealed under the data key
//! its header names, with place (ValueLog, file, offset). An entry's plaintext is
//! `varint key_len ‖ key ‖ u64 ts ‖ varint expires_at ‖ value`: lengths, expiry and flags are
//! inside the sealed unit. A read checks that the entry's key and timestamp are the ones the
//! pointer was made for, so a pointer can never return another entry's value.
//!
//! Garbage collection (in `db`) rewrites the live entries of a file under the active key and
//! deletes the file once no snapshot can reach the old pointers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::chunk::{self, ChunkAt, ChunkWriter, Scan};
use crate::codec::{put_len_prefixed, put_varint, DecodeError, Reader};
use crate::fs::{ReadableFile, Storage};
use crate::keys::{FileKind, KeyRing, Sealer};
use crate::{Error, Result};

pub(crate) fn file_name(no: u64) -> String {
    format!("{no:06}.vlog")
}

/// Where a value lives: file, offset of its chunk, chunk length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    pub(crate) file_no: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl Pointer {
    pub(crate) const LEN: usize = 20;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.extend_from_slice(&self.file_no.to_le_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Pointer> {
        let mut r = Reader::new(b);
        let p = Pointer {
            file_no: r.u64("file").ok()?,
            offset: r.u64("offset").ok()?,
            len: r.u32("length").ok()?,
        };
        r.is_empty().then_some(p)
    }
}

/// One decoded entry.
pub(crate) struct VlogEntry<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) ts: u64,
    pub(crate) expires_at: u64,
    pub(crate) value: &'a [u8],
}

pub(crate) fn decode_entry(plain: &[u8]) -> std::result::Result<VlogEntry<'_>, DecodeError> {
    let mut r = Reader::new(plain);
    let key = r.len_prefixed("value-log entry key")?;
    let ts = r.u64("value-log entry timestamp")?;
    let expires_at = r.varint("value-log entry expiry")?;
    let value = r.bytes(r.remaining(), "value")?;
    Ok(VlogEntry {
        key,
        ts,
        expires_at,
        value,
    })
}

/// The state of a value-log file in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileState {
    /// Holds values pointers may reach.
    Live,
    /// Garbage-collected: its live entries were rewritten; it is being deleted.
    Deleting,
}

/// What the store knows about one value-log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VlogFile {
    pub(crate) size: u64,
    /// Bytes of entries no live version points to any more (from compaction).
    pub(crate) discard: u64,
    /// Data keys its chunks are sealed under.
    pub(crate) key_ids: Vec<u32>,
    pub(crate) state: FileState,
    /// Its whole length was scanned or written by this store and no byte is appended to it
    /// any more. Files not complete at open are scanned (and a torn tail cut).
    pub(crate) complete: bool,
}

/// An open value-log file being appended to.
pub(crate) struct VlogWriter {
    chunks: ChunkWriter,
    plain: Vec<u8>,
}

impl VlogWriter {
    pub(crate) fn create(storage: &dyn Storage, file_no: u64, sealer: Sealer) -> Result<Self> {
        Ok(VlogWriter {
            chunks: ChunkWriter::create(
                storage,
                FileKind::ValueLog,
                file_name(file_no),
                file_no,
                sealer,
            )?,
            plain: Vec::new(),
        })
    }

    pub(crate) fn file_no(&self) -> u64 {
        self.chunks.file_no()
    }

    pub(crate) fn key_id(&self) -> u32 {
        self.chunks.key_id()
    }

    pub(crate) fn set_sealer(&mut self, sealer: Sealer) {
        self.chunks.set_sealer(sealer);
    }

    pub(crate) fn len(&self) -> u64 {
        self.chunks.len()
    }

    /// Appends one entry (not synced) and returns its pointer.
    pub(crate) fn append(
        &mut self,
        key: &[u8],
        ts: u64,
        expires_at: u64,
        value: &[u8],
    ) -> Result<Pointer> {
        self.plain.clear();
        put_len_prefixed(&mut self.plain, key);
        self.plain.extend_from_slice(&ts.to_le_bytes());
        put_varint(&mut self.plain, expires_at);
        self.plain.extend_from_slice(value);
        let (offset, len) = self.chunks.write(&self.plain, false)?;
        Ok(Pointer {
            file_no: self.file_no(),
            offset,
            len,
        })
    }
}

/// The value-log files of a store and open readers for them.
#[derive(Default)]
pub(crate) struct ValueLog {
    files: Mutex<BTreeMap<u64, VlogFile>>,
    readers: RwLock<HashMap<u64, Arc<dyn ReadableFile>>>,
    /// Files written to since they were last fsynced, with a count of writes.
    unsynced: Mutex<BTreeMap<u64, u64>>,
    sync_lock: Mutex<()>,
}

impl ValueLog {
    pub(crate) fn new(files: BTreeMap<u64, VlogFile>) -> Self {
        ValueLog {
            files: Mutex::new(files),
            readers: RwLock::new(HashMap::new()),
            unsynced: Mutex::new(BTreeMap::new()),
            sync_lock: Mutex::new(()),
        }
    }

    fn reader(&self, storage: &dyn Storage, no: u64) -> Result<Arc<dyn ReadableFile>> {
        if let Some(r) = self.readers.read().get(&no) {
            return Ok(r.clone());
        }
        let name = file_name(no);
        let f = storage.open(&name).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::integrity(&name, 0, "value pointer to a missing value-log file")
            } else {
                Error::io(&name, e)
            }
        })?;
        self.readers.write().insert(no, f.clone());
        Ok(f)
    }

    /// Follows `ptr`, checking that the entry is the one made for (`key`, `ts`). Any failure
    /// is an [`Error::Integrity`] naming the value-log file and the entry's offset.
    pub(crate) fn read(
        &self,
        storage: &dyn Storage,
        keys: &KeyRing,
        ptr: Pointer,
        key: &[u8],
        ts: u64,
    ) -> Result<Vec<u8>> {
        let name = file_name(ptr.file_no);
        let f = self.reader(storage, ptr.file_no)?;
        let damaged = |reason| Error::integrity(&name, ptr.offset, reason);
        let len = f.len().map_err(|e| Error::io(&name, e))?;
        if ptr.offset.saturating_add(u64::from(ptr.len)) > len {
            return Err(damaged("value pointer past the end of the value-log file"));
        }
        let mut buf = vec![0u8; ptr.len as usize];
        f.read_exact_at(ptr.offset, &mut buf)
            .map_err(|e| Error::io(&name, e))?;
        let at = ChunkAt {
            kind: FileKind::ValueLog,
            file_no: ptr.file_no,
            base: ptr.offset,
        };
        let (plain, end, _) = chunk::open(keys, at, &mut buf, 0).map_err(damaged)?;
        if end != buf.len() {
            return Err(damaged("value pointer length does not match the entry"));
        }
        let e = decode_entry(&buf[plain]).map_err(|_| damaged("malformed value-log entry"))?;
        if e.key != key || e.ts != ts {
            return Err(damaged("value pointer leads to another entry"));
        }
        Ok(e.value.to_vec())
    }

    /// Reads a whole file, calling `visit(pointer, entry)` for each entry.
    pub(crate) fn scan(
        storage: &dyn Storage,
        keys: &KeyRing,
        no: u64,
        visit: &mut dyn FnMut(Pointer, VlogEntry<'_>, u32) -> Result<()>,
    ) -> Result<Scan> {
        let name = file_name(no);
        chunk::scan(
            storage,
            keys,
            FileKind::ValueLog,
            &name,
            no,
            &mut |at, end, plain, key_id| {
                let len = (end - at) as u32;
                let e = decode_entry(plain).map_err(|e| e.into_error(&name, at))?;
                visit(
                    Pointer {
                        file_no: no,
                        offset: at,
                        len,
                    },
                    e,
                    key_id,
                )
            },
        )
    }

    /// Fsyncs every file written to since its last fsync.
    pub(crate) fn sync_written(&self, storage: &dyn Storage) -> Result<()> {
        // One syncer at a time: a caller that finds a sync running waits for it, then syncs
        // whatever is still marked. A file written to during its fsync stays marked (its
        // write count changed), so no write is ever marked synced without an fsync after it.
        let _one = self.sync_lock.lock();
        let pending: Vec<(u64, u64)> = self.unsynced.lock().iter().map(|(n, c)| (*n, *c)).collect();
        for (no, count) in pending {
            let name = file_name(no);
            storage.sync_file(&name).map_err(|e| Error::io(name, e))?;
            let mut unsynced = self.unsynced.lock();
            if unsynced.get(&no) == Some(&count) {
                unsynced.remove(&no);
            }
        }
        Ok(())
    }

    /// Records a chunk written to file `no`.
    pub(crate) fn note_write(&self, no: u64, end: u64, key_id: u32) {
        *self.unsynced.lock().entry(no).or_insert(0) += 1;
        let mut files = self.files.lock();
        let f = files.entry(no).or_insert_with(|| VlogFile {
            size: 0,
            discard: 0,
            key_ids: Vec::new(),
            state: FileState::Live,
            complete: false,
        });
        f.size = f.size.max(end);
        if !f.key_ids.contains(&key_id) {
            f.key_ids.push(key_id);
        }
    }

    /// Counts bytes of a file that no live version points to any more.
    pub(crate) fn add_discard(&self, no: u64, bytes: u64) {
        if let Some(f) = self.files.lock().get_mut(&no) {
            f.discard = (f.discard + bytes).min(f.size);
        }
    }

    pub(crate) fn set_complete(&self, no: u64) {
        if let Some(f) = self.files.lock().get_mut(&no) {
            f.complete = true;
        }
    }

    pub(crate) fn set_state(&self, no: u64, state: FileState) {
        if let Some(f) = self.files.lock().get_mut(&no) {
            f.state = state;
        }
    }

    /// Forgets a deleted file.
    pub(crate) fn forget(&self, no: u64) {
        self.files.lock().remove(&no);
        self.readers.write().remove(&no);
    }

    pub(crate) fn files(&self) -> BTreeMap<u64, VlogFile> {
        self.files.lock().clone()
    }
}

//! The write-ahead log: one file per memtable, `NNNNNN.wal`, a sequence of chunks (see
//! `chunk`). Each chunk's plaintext is one commit, `varint count ‖ count × entry`, so an AEAD
//! call is amortized over a whole batch; or, first in a log made by rotation, a link
//! `varint 0 ‖ u64 previous log number ‖ u64 previous log's final length`.
//!
//! Recovery accepts a torn tail only: a failing chunk with no valid chunk after it. A failing
//! chunk followed by a valid one is corruption in the middle and an error.

pub(crate) use crate::chunk::Tail;
use crate::chunk::{self, ChunkWriter};
use crate::codec::Reader;
use crate::entry::{self, Record, RecordRef};
use crate::fs::Storage;
use crate::keys::{FileKind, KeyRing, Sealer};
use crate::{Error, Result};

pub(crate) fn file_name(no: u64) -> String {
    format!("{no:06}.wal")
}

/// An open WAL file being appended to.
pub(crate) struct WalWriter {
    chunks: ChunkWriter,
    plain: Vec<u8>,
}

impl WalWriter {
    pub(crate) fn create(storage: &dyn Storage, file_no: u64, sealer: Sealer) -> Result<Self> {
        Ok(WalWriter {
            chunks: ChunkWriter::create(
                storage,
                FileKind::Wal,
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

    /// Seals the following chunks under another key (each chunk header names its key).
    pub(crate) fn set_sealer(&mut self, sealer: Sealer) {
        self.chunks.set_sealer(sealer);
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.chunks.len()
    }

    /// Appends one commit. The bytes reach the OS before this returns; with `sync` they are
    /// durable. An I/O error here must poison the store.
    pub(crate) fn append(&mut self, records: &[Record], sync: bool) -> Result<()> {
        self.plain.clear();
        crate::codec::put_varint(&mut self.plain, records.len() as u64);
        for r in records {
            entry::encode(r.as_ref(), &mut self.plain);
        }
        self.chunks.write(&self.plain, sync).map(|_| ())
    }

    /// Writes the link chunk that starts a log: the previous log's number and final length,
    /// so recovery can tell whether the previous log lost its end.
    pub(crate) fn append_link(&mut self, prev_no: u64, prev_len: u64) -> Result<()> {
        self.plain.clear();
        crate::codec::put_varint(&mut self.plain, 0);
        self.plain.extend_from_slice(&prev_no.to_le_bytes());
        self.plain.extend_from_slice(&prev_len.to_le_bytes());
        self.chunks.write(&self.plain, false).map(|_| ())
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        self.chunks.sync()
    }
}

/// What replaying one log found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay {
    pub(crate) tail: Tail,
    /// Bytes of authentic chunks from the start.
    pub(crate) clean_len: u64,
    /// The file's length.
    pub(crate) file_len: u64,
    /// The previous log's number and final length, from this log's link chunk.
    pub(crate) link: Option<(u64, u64)>,
    /// Every byte after the authentic prefix is zero (space allocated, data never written).
    pub(crate) zero_tail: bool,
}

/// Reads every commit of a WAL file, calling `apply` for each record in order and
/// `key_seen` with the key id of each chunk.
pub(crate) fn replay(
    storage: &dyn Storage,
    keys: &KeyRing,
    file_no: u64,
    mut apply: impl FnMut(RecordRef<'_>),
    key_seen: &mut dyn FnMut(u32),
) -> Result<Replay> {
    let name = file_name(file_no);
    let mut link = None;
    let scan = chunk::scan(
        storage,
        keys,
        FileKind::Wal,
        &name,
        file_no,
        &mut |at, _end, plain, key_id| {
            key_seen(key_id);
            let base = at + chunk::HEADER_LEN as u64;
            let l = decode_commit(plain, &mut apply).map_err(|e| e.into_error(&name, base))?;
            if l.is_some() {
                if at != 0 {
                    return Err(Error::integrity(
                        &name,
                        at,
                        "link chunk not at the start of the log",
                    ));
                }
                link = l;
            }
            Ok(())
        },
    )?;
    Ok(Replay {
        tail: scan.tail,
        clean_len: scan.clean_len,
        file_len: scan.file_len,
        link,
        zero_tail: scan.zero_tail,
    })
}

pub(crate) fn decode_commit(
    plain: &[u8],
    apply: &mut impl FnMut(RecordRef<'_>),
) -> std::result::Result<Option<(u64, u64)>, crate::codec::DecodeError> {
    let mut r = Reader::new(plain);
    let count = r.varint("record count")?;
    if count == 0 {
        let prev = r.u64("link: previous log number")?;
        let len = r.u64("link: previous log length")?;
        if !r.is_empty() {
            return Err(crate::codec::DecodeError {
                at: r.pos(),
                what: "trailing bytes in a link chunk",
            });
        }
        return Ok(Some((prev, len)));
    }
    for _ in 0..count {
        apply(entry::decode(&mut r)?);
    }
    if !r.is_empty() {
        return Err(crate::codec::DecodeError {
            at: r.pos(),
            what: "trailing bytes in a WAL chunk",
        });
    }
    Ok(None)
}

/// Strictly checks a WAL file: every chunk must authenticate (used by `verify`).
pub(crate) fn verify(storage: &dyn Storage, keys: &KeyRing, file_no: u64) -> Result<u64> {
    let mut records = 0u64;
    let replayed = replay(storage, keys, file_no, |_| records += 1, &mut |_| {})?;
    match replayed.tail {
        Tail::Clean => Ok(records),
        Tail::Torn(off) => Err(Error::integrity(
            file_name(file_no),
            off,
            "last chunk is incomplete or fails authentication (a torn tail is discarded on the next open)",
        )),
    }
}

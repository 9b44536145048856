//! The write-ahead log: one file per memtable, `NNNNNN.wal`, a sequence of chunks.
//!
//! Chunk = header (16 bytes, plaintext) ‖ sealed unit.
//! Header: `u32 unit_len ‖ u32 key_id ‖ u32 reserved (0) ‖ u32 crc32(unit_len, key_id, file_no, offset)`.
//! The unit is sealed with place (WAL, file_no, offset of the header); its plaintext is one
//! commit: `varint count ‖ count × entry` (see `entry`). One chunk per commit, so an AEAD call
//! is amortized over the whole batch.
//!
//! Recovery accepts a torn tail only: a failing chunk with no valid chunk after it. A failing
//! chunk followed by a valid one is corruption in the middle and an error.

use crate::codec::Reader;
use crate::entry::{self, Record, RecordRef};
use crate::fs::{Storage, WritableFile};
use crate::keys::{FileKind, KeyRing, Place, Sealer};
use crate::{Error, Result};

const HEADER_LEN: usize = 16;
/// Largest unit a chunk may claim (bounds allocation when reading untrusted headers).
const MAX_UNIT: u32 = 1 << 30;

pub(crate) fn file_name(no: u64) -> String {
    format!("{no:06}.wal")
}

fn header_crc(unit_len: u32, key_id: u32, file_no: u64, offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&unit_len.to_le_bytes());
    h.update(&key_id.to_le_bytes());
    h.update(&file_no.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.finalize()
}

/// An open WAL file being appended to.
pub(crate) struct WalWriter {
    file: Box<dyn WritableFile>,
    file_no: u64,
    offset: u64,
    sealer: Sealer,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

impl WalWriter {
    pub(crate) fn create(storage: &dyn Storage, file_no: u64, sealer: Sealer) -> Result<Self> {
        let name = file_name(file_no);
        let file = storage.create(&name).map_err(|e| Error::io(&name, e))?;
        storage.sync_dir().map_err(|e| Error::io(".", e))?;
        Ok(WalWriter {
            file,
            file_no,
            offset: 0,
            sealer,
            plain: Vec::new(),
            sealed: Vec::new(),
        })
    }

    pub(crate) fn file_no(&self) -> u64 {
        self.file_no
    }

    pub(crate) fn key_id(&self) -> u32 {
        self.sealer.key_id()
    }

    /// Seals the following chunks under another key (each chunk header names its key).
    pub(crate) fn set_sealer(&mut self, sealer: Sealer) {
        self.sealer = sealer;
    }

    /// Appends one commit. The bytes reach the OS before this returns; with `sync` they are
    /// durable. An I/O error here must poison the store.
    pub(crate) fn append(&mut self, records: &[Record], sync: bool) -> Result<()> {
        self.plain.clear();
        crate::codec::put_varint(&mut self.plain, records.len() as u64);
        for r in records {
            entry::encode(r.as_ref(), &mut self.plain);
        }
        self.write_chunk(sync)
    }

    /// Writes the link chunk that starts a log: the previous log's number and final length,
    /// so recovery can tell whether the previous log lost its end.
    pub(crate) fn append_link(&mut self, prev_no: u64, prev_len: u64) -> Result<()> {
        self.plain.clear();
        crate::codec::put_varint(&mut self.plain, 0);
        self.plain.extend_from_slice(&prev_no.to_le_bytes());
        self.plain.extend_from_slice(&prev_len.to_le_bytes());
        self.write_chunk(false)
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.offset
    }

    fn write_chunk(&mut self, sync: bool) -> Result<()> {
        let unit_len = u32::try_from(self.plain.len() + self.sealer.overhead())
            .ok()
            .filter(|l| *l <= MAX_UNIT)
            .ok_or(Error::InvalidArgument(
                "commit too large for one WAL chunk (1 GiB)",
            ))?;
        self.sealed.clear();
        self.sealed.resize(HEADER_LEN, 0);
        let place = Place {
            kind: FileKind::Wal,
            file_no: self.file_no,
            position: self.offset,
        };
        self.sealer.seal(place, &self.plain, &mut self.sealed)?;
        debug_assert_eq!(self.sealed.len() - HEADER_LEN, unit_len as usize);
        let key_id = self.sealer.key_id();
        self.sealed[0..4].copy_from_slice(&unit_len.to_le_bytes());
        self.sealed[4..8].copy_from_slice(&key_id.to_le_bytes());
        let crc = header_crc(unit_len, key_id, self.file_no, self.offset);
        self.sealed[12..16].copy_from_slice(&crc.to_le_bytes());
        let name = || file_name(self.file_no);
        self.file
            .append(&self.sealed)
            .map_err(|e| Error::io(name(), e))?;
        self.file.flush().map_err(|e| Error::io(name(), e))?;
        if sync {
            self.file.sync().map_err(|e| Error::io(name(), e))?;
        }
        self.offset += self.sealed.len() as u64;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file
            .sync()
            .map_err(|e| Error::io(file_name(self.file_no), e))
    }
}

/// How a WAL file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every byte belonged to a valid chunk.
    Clean,
    /// An incomplete or failing last chunk at this offset was discarded.
    Torn(u64),
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
    let mut buf = storage.read_all(&name).map_err(|e| Error::io(&name, e))?;
    let mut offset = 0usize;
    let mut link = None;
    let mut tail = Tail::Clean;
    while offset < buf.len() {
        match open_chunk(keys, file_no, &mut buf, offset) {
            Ok((plain_range, next)) => {
                if let Ok((_, key_id)) = parse_header(&buf, file_no, offset) {
                    key_seen(key_id);
                }
                let base = (offset + HEADER_LEN) as u64;
                let l = decode_commit(&buf[plain_range.clone()], &mut apply)
                    .map_err(|e| e.into_error(&name, base))?;
                if l.is_some() {
                    if offset != 0 {
                        return Err(Error::integrity(
                            &name,
                            offset as u64,
                            "link chunk not at the start of the log",
                        ));
                    }
                    link = l;
                }
                offset = next;
            }
            Err(reason) => {
                if valid_chunk_after(keys, file_no, &buf, offset + 1) {
                    return Err(Error::integrity(&name, offset as u64, reason));
                }
                tail = Tail::Torn(offset as u64);
                break;
            }
        }
    }
    Ok(Replay {
        tail,
        clean_len: offset as u64,
        file_len: buf.len() as u64,
        link,
        zero_tail: buf[offset.min(buf.len())..].iter().all(|b| *b == 0),
    })
}

/// Decodes one chunk's plaintext: `varint count ‖ count × entry`, nothing after; or, with
/// count 0, a link `u64 previous log number ‖ u64 its final length`, returned.
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

/// Authenticates the chunk at `offset` in place; returns the plaintext range and the next offset.
fn open_chunk(
    keys: &KeyRing,
    file_no: u64,
    buf: &mut [u8],
    offset: usize,
) -> std::result::Result<(std::ops::Range<usize>, usize), &'static str> {
    let (unit_len, key_id) = parse_header(buf, file_no, offset)?;
    let start = offset + HEADER_LEN;
    let end = start
        .checked_add(unit_len as usize)
        .filter(|e| *e <= buf.len())
        .ok_or("chunk extends past the end of the file")?;
    let sealer = keys
        .sealer_for(key_id)
        .ok_or("chunk sealed under an unknown key id")?;
    let place = Place {
        kind: FileKind::Wal,
        file_no,
        position: offset as u64,
    };
    let plain_len = sealer
        .open(place, &mut buf[start..end])
        .ok_or("chunk failed authentication")?
        .len();
    let plain_start = if keys.is_encrypted() {
        start + sealdb_crypto::NONCE_LEN
    } else {
        start
    };
    Ok((plain_start..plain_start + plain_len, end))
}

fn parse_header(
    buf: &[u8],
    file_no: u64,
    offset: usize,
) -> std::result::Result<(u32, u32), &'static str> {
    let h = buf
        .get(offset..offset + HEADER_LEN)
        .ok_or("incomplete chunk header")?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (unit_len, key_id, reserved, crc) = (word(0), word(4), word(8), word(12));
    if crc != header_crc(unit_len, key_id, file_no, offset as u64) || reserved != 0 {
        return Err("chunk header checksum mismatch");
    }
    if unit_len > MAX_UNIT {
        return Err("chunk length out of range");
    }
    Ok((unit_len, key_id))
}

/// Whether any authentic chunk starts at or after `from` (used to tell a torn tail from
/// corruption in the middle). Only runs on the failure path.
fn valid_chunk_after(keys: &KeyRing, file_no: u64, buf: &[u8], from: usize) -> bool {
    let mut scratch = Vec::new();
    (from..buf.len().saturating_sub(HEADER_LEN - 1)).any(|off| {
        if parse_header(buf, file_no, off).is_err() {
            return false;
        }
        scratch.clear();
        scratch.extend_from_slice(buf);
        open_chunk(keys, file_no, &mut scratch, off).is_ok()
    })
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

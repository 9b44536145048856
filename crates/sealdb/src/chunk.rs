//! Chunk framing shared by the append-only files (WAL and value log).
//!
//! Chunk = header (16 bytes, plaintext) ‖ sealed unit.
//! Header: `u32 unit_len ‖ u32 key_id ‖ u32 reserved (0) ‖ u32 crc32(unit_len, key_id,
//! file_no, offset)`. The unit is sealed with place (kind, file_no, offset of the header), so
//! a chunk moved to another file or offset fails. The header's CRC lets a reader find chunk
//! boundaries and tell a torn tail from corruption in the middle.

use std::ops::Range;

use crate::fs::{Storage, WritableFile};
use crate::keys::{FileKind, KeyRing, Place, Sealer};
use crate::{Error, Result};

pub(crate) const HEADER_LEN: usize = 16;
/// Largest unit a chunk may claim (bounds allocation when reading untrusted headers).
const MAX_UNIT: u32 = 1 << 30;

fn header_crc(unit_len: u32, key_id: u32, file_no: u64, offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&unit_len.to_le_bytes());
    h.update(&key_id.to_le_bytes());
    h.update(&file_no.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.finalize()
}

/// Appends chunks to one file.
pub(crate) struct ChunkWriter {
    file: Box<dyn WritableFile>,
    name: String,
    kind: FileKind,
    file_no: u64,
    offset: u64,
    sealer: Sealer,
    sealed: Vec<u8>,
}

impl ChunkWriter {
    /// Creates the file and makes its name durable.
    pub(crate) fn create(
        storage: &dyn Storage,
        kind: FileKind,
        name: String,
        file_no: u64,
        sealer: Sealer,
    ) -> Result<Self> {
        let file = storage.create(&name).map_err(|e| Error::io(&name, e))?;
        storage.sync_dir().map_err(|e| Error::io(".", e))?;
        Ok(ChunkWriter {
            file,
            name,
            kind,
            file_no,
            offset: 0,
            sealer,
            sealed: Vec::new(),
        })
    }

    pub(crate) fn file_no(&self) -> u64 {
        self.file_no
    }

    pub(crate) fn key_id(&self) -> u32 {
        self.sealer.key_id()
    }

    /// Seals the following chunks under another key (each header names its key).
    pub(crate) fn set_sealer(&mut self, sealer: Sealer) {
        self.sealer = sealer;
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.offset
    }

    /// Writes one chunk holding `plain`; returns its offset and total length. The bytes reach
    /// the OS before this returns; with `sync` they are durable. Errors other than
    /// [`Error::Io`] happen before any byte is written.
    pub(crate) fn write(&mut self, plain: &[u8], sync: bool) -> Result<(u64, u32)> {
        let unit_len = u32::try_from(plain.len() + self.sealer.overhead())
            .ok()
            .filter(|l| *l <= MAX_UNIT)
            .ok_or(Error::InvalidArgument(
                "unit too large for one chunk (1 GiB)",
            ))?;
        self.sealed.clear();
        self.sealed.resize(HEADER_LEN, 0);
        let place = Place {
            kind: self.kind,
            file_no: self.file_no,
            position: self.offset,
        };
        self.sealer.seal(place, plain, &mut self.sealed)?;
        let key_id = self.sealer.key_id();
        self.sealed[0..4].copy_from_slice(&unit_len.to_le_bytes());
        self.sealed[4..8].copy_from_slice(&key_id.to_le_bytes());
        let crc = header_crc(unit_len, key_id, self.file_no, self.offset);
        self.sealed[12..16].copy_from_slice(&crc.to_le_bytes());
        self.file
            .append(&self.sealed)
            .map_err(|e| Error::io(&self.name, e))?;
        self.file.flush().map_err(|e| Error::io(&self.name, e))?;
        if sync {
            self.file.sync().map_err(|e| Error::io(&self.name, e))?;
        }
        let at = self.offset;
        let len = self.sealed.len() as u32;
        self.offset += u64::from(len);
        Ok((at, len))
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file.sync().map_err(|e| Error::io(&self.name, e))
    }
}

/// Where a chunk lies: `buf` holds the file's bytes from file offset `base` on.
#[derive(Clone, Copy)]
pub(crate) struct ChunkAt {
    pub(crate) kind: FileKind,
    pub(crate) file_no: u64,
    pub(crate) base: u64,
}

/// Checks the header at `at` in `buf`; returns (unit length, key id).
pub(crate) fn parse_header(
    c: ChunkAt,
    buf: &[u8],
    at: usize,
) -> std::result::Result<(u32, u32), &'static str> {
    let h = buf
        .get(at..at.saturating_add(HEADER_LEN))
        .ok_or("incomplete chunk header")?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (unit_len, key_id, reserved, crc) = (word(0), word(4), word(8), word(12));
    if crc != header_crc(unit_len, key_id, c.file_no, c.base + at as u64) || reserved != 0 {
        return Err("chunk header checksum mismatch");
    }
    if unit_len > MAX_UNIT {
        return Err("chunk length out of range");
    }
    Ok((unit_len, key_id))
}

/// Authenticates the chunk at `at` in place; returns the plaintext range, the next chunk's
/// position and the key id.
pub(crate) fn open(
    keys: &KeyRing,
    c: ChunkAt,
    buf: &mut [u8],
    at: usize,
) -> std::result::Result<(Range<usize>, usize, u32), &'static str> {
    let (unit_len, key_id) = parse_header(c, buf, at)?;
    let start = at + HEADER_LEN;
    let end = start
        .checked_add(unit_len as usize)
        .filter(|e| *e <= buf.len())
        .ok_or("chunk extends past the end of the file")?;
    let sealer = keys
        .sealer_for(key_id)
        .ok_or("chunk sealed under an unknown key id")?;
    let place = Place {
        kind: c.kind,
        file_no: c.file_no,
        position: c.base + at as u64,
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
    Ok((plain_start..plain_start + plain_len, end, key_id))
}

/// How a scan of a whole file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every byte belonged to a valid chunk.
    Clean,
    /// An incomplete or failing last chunk at this offset (nothing authentic after it).
    Torn(u64),
}

/// What a scan of a whole file found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan {
    pub(crate) tail: Tail,
    /// Bytes of authentic chunks from the start.
    pub(crate) clean_len: u64,
    /// The file's length.
    pub(crate) file_len: u64,
    /// Every byte after the authentic prefix is zero (space allocated, data never written).
    pub(crate) zero_tail: bool,
}

/// Called for each authentic chunk: (offset, end offset, plaintext, key id).
pub(crate) type Visitor<'a> = dyn FnMut(u64, u64, &[u8], u32) -> Result<()> + 'a;

/// Reads a whole file chunk by chunk, calling `visit(offset, end, plaintext, key_id)`. A failing
/// chunk with an authentic chunk after it is corruption ([`Error::Integrity`]); one without
/// is a torn tail, reported in the result.
pub(crate) fn scan(
    storage: &dyn Storage,
    keys: &KeyRing,
    kind: FileKind,
    name: &str,
    file_no: u64,
    visit: &mut Visitor<'_>,
) -> Result<Scan> {
    let mut buf = storage.read_all(name).map_err(|e| Error::io(name, e))?;
    let c = ChunkAt {
        kind,
        file_no,
        base: 0,
    };
    let mut at = 0usize;
    let mut tail = Tail::Clean;
    while at < buf.len() {
        match open(keys, c, &mut buf, at) {
            Ok((plain, next, key_id)) => {
                visit(at as u64, next as u64, &buf[plain], key_id)?;
                at = next;
            }
            Err(reason) => {
                if valid_chunk_after(keys, c, &buf, at + 1) {
                    return Err(Error::integrity(name, at as u64, reason));
                }
                tail = Tail::Torn(at as u64);
                break;
            }
        }
    }
    Ok(Scan {
        tail,
        clean_len: at as u64,
        file_len: buf.len() as u64,
        zero_tail: buf[at.min(buf.len())..].iter().all(|b| *b == 0),
    })
}

/// Whether any authentic chunk starts at or after `from`. Only runs on the failure path.
fn valid_chunk_after(keys: &KeyRing, c: ChunkAt, buf: &[u8], from: usize) -> bool {
    let mut scratch = Vec::new();
    (from..buf.len().saturating_sub(HEADER_LEN - 1)).any(|at| {
        let Ok((unit_len, _)) = parse_header(c, buf, at) else {
            return false;
        };
        let Some(end) = (at + HEADER_LEN)
            .checked_add(unit_len as usize)
            .filter(|e| *e <= buf.len())
        else {
            return false;
        };
        scratch.clear();
        scratch.extend_from_slice(&buf[at..end]);
        let one = ChunkAt {
            base: c.base + at as u64,
            ..c
        };
        open(keys, one, &mut scratch, 0).is_ok()
    })
}

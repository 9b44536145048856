//! Sorted string tables (`NNNNNN.sst`): immutable files of entries in internal order.
//!
//! Layout: `data block unit*  ‖ index unit ‖ filter unit ‖ footer (44 bytes, plaintext)`.
//! Each unit is sealed with place (Table, file_no, position): data block `i` uses position
//! `i`, the index `INDEX_POSITION`, the filter `FILTER_POSITION`. The footer holds only
//! offsets, lengths, the key id, the format version and the magic; the index repeats the
//! offsets and block count, so a modified footer is detected. See docs/format.md.

mod block;
pub(crate) mod filter;

use std::cmp::Ordering;
use std::sync::Arc;

pub(crate) use block::Block;
use block::BlockBuilder;
pub(crate) use filter::key_hash;
use filter::Bloom;

use crate::codec::{put_len_prefixed, put_varint, Reader};
use crate::entry::{cmp_internal, Record, RecordRef};
use crate::fs::{ReadableFile, Storage, WritableFile};
use crate::keys::{FileKind, KeyRing, Place, Sealer, FORMAT_VERSION};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"SEALSST1";
pub(crate) const FOOTER_LEN: usize = 44;
const INDEX_POSITION: u64 = 1 << 40;
const FILTER_POSITION: u64 = (1 << 40) + 1;
/// Largest unit a table may claim (bounds allocation on untrusted lengths).
const MAX_UNIT: u32 = 1 << 30;

/// Decoded blocks shared by all tables, keyed by (file number, block index).
pub(crate) type BlockCache = quick_cache::sync::Cache<(u64, u32), Arc<Block>, BlockWeighter>;

/// Weighs cached blocks by their memory.
#[derive(Clone, Copy)]
pub(crate) struct BlockWeighter;

impl quick_cache::Weighter<(u64, u32), Arc<Block>> for BlockWeighter {
    fn weight(&self, _: &(u64, u32), b: &Arc<Block>) -> u64 {
        b.weight() as u64
    }
}

pub(crate) fn new_cache(bytes: usize) -> BlockCache {
    let items = (bytes / 4096).max(16);
    quick_cache::sync::Cache::with_weighter(items, bytes as u64, BlockWeighter)
}

pub(crate) fn file_name(no: u64) -> String {
    format!("{no:06}.sst")
}

/// What the manifest records about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableMeta {
    pub(crate) file_no: u64,
    pub(crate) size: u64,
    pub(crate) key_id: u32,
    pub(crate) entries: u64,
    pub(crate) smallest: Vec<u8>,
    pub(crate) largest: Vec<u8>,
    pub(crate) max_ts: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    /// First 8 bytes of `last_key`, big-endian and zero-padded: most binary-search steps
    /// are decided on it without touching the key's bytes.
    head: u64,
    offset: u64,
    len: u32,
    last_key: Vec<u8>,
    last_ts: u64,
}

fn key_head(key: &[u8]) -> u64 {
    let mut h = [0u8; 8];
    let n = key.len().min(8);
    h[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(h)
}

impl IndexEntry {
    /// Orders this block's last key against a user key.
    fn cmp_key(&self, head: u64, key: &[u8]) -> Ordering {
        self.head
            .cmp(&head)
            .then_with(|| self.last_key.as_slice().cmp(key))
    }
}

/// Writes one table.
pub(crate) struct TableBuilder {
    file: Box<dyn WritableFile>,
    file_no: u64,
    sealer: Sealer,
    block_size: usize,
    offset: u64,
    block: BlockBuilder,
    index: Vec<IndexEntry>,
    hashes: Vec<u64>,
    last: Option<(Vec<u8>, u64)>,
    smallest: Vec<u8>,
    entries: u64,
    max_ts: u64,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

impl TableBuilder {
    pub(crate) fn create(
        storage: &dyn Storage,
        file_no: u64,
        sealer: Sealer,
        block_size: usize,
    ) -> Result<Self> {
        let name = file_name(file_no);
        let file = storage.create(&name).map_err(|e| Error::io(&name, e))?;
        Ok(TableBuilder {
            file,
            file_no,
            sealer,
            block_size,
            offset: 0,
            block: BlockBuilder::default(),
            index: Vec::new(),
            hashes: Vec::new(),
            last: None,
            smallest: Vec::new(),
            entries: 0,
            max_ts: 0,
            plain: Vec::new(),
            sealed: Vec::new(),
        })
    }

    /// Adds an entry; entries must come in internal order.
    pub(crate) fn add(&mut self, r: RecordRef<'_>) -> Result<()> {
        match &mut self.last {
            Some((k, ts)) => {
                debug_assert_eq!(cmp_internal(k, *ts, r.key, r.ts), Ordering::Less);
                if k.as_slice() != r.key {
                    self.hashes.push(key_hash(r.key));
                    k.clear();
                    k.extend_from_slice(r.key);
                }
                *ts = r.ts;
            }
            None => {
                self.smallest = r.key.to_vec();
                self.hashes.push(key_hash(r.key));
                self.last = Some((r.key.to_vec(), r.ts));
            }
        }
        self.block.add(r);
        self.entries += 1;
        self.max_ts = self.max_ts.max(r.ts);
        if self.block.estimated_size() >= self.block_size {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Bytes written so far plus the open block.
    pub(crate) fn estimated_size(&self) -> u64 {
        self.offset + self.block.estimated_size() as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn write_unit(&mut self, position: u64) -> Result<(u64, u32)> {
        self.sealed.clear();
        let place = Place {
            kind: FileKind::Table,
            file_no: self.file_no,
            position,
        };
        self.sealer.seal(place, &self.plain, &mut self.sealed)?;
        let len = u32::try_from(self.sealed.len())
            .ok()
            .filter(|l| *l <= MAX_UNIT)
            .ok_or(Error::InvalidArgument(
                "entry too large for one table block (1 GiB)",
            ))?;
        self.file
            .append(&self.sealed)
            .map_err(|e| Error::io(file_name(self.file_no), e))?;
        let at = self.offset;
        self.offset += u64::from(len);
        Ok((at, len))
    }

    fn finish_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.block.finish(&mut self.plain);
        let position = self.index.len() as u64;
        let (offset, len) = self.write_unit(position)?;
        let (last_key, last_ts) = self.last.clone().expect("non-empty block has a last entry");
        self.index.push(IndexEntry {
            head: key_head(&last_key),
            offset,
            len,
            last_key,
            last_ts,
        });
        Ok(())
    }

    /// Writes index, filter and footer, and makes the file durable.
    pub(crate) fn finish(mut self, bits_per_key: usize) -> Result<TableMeta> {
        self.finish_block()?;
        let name = file_name(self.file_no);
        if self.index.is_empty() {
            return Err(Error::InvalidArgument("empty table"));
        }
        let index_off = self.offset;
        // The filter's offset is known once the index is written; the index names it, so the
        // index is encoded after computing the filter unit's future offset from its length.
        let filter_plain = Bloom::build(&self.hashes, bits_per_key);
        let largest = self.last.clone().map(|(k, _)| k).unwrap_or_default();
        let mut index_plain = Vec::new();
        encode_index(&self.index, &mut index_plain);
        put_varint(&mut index_plain, self.entries);
        put_len_prefixed(&mut index_plain, &self.smallest);
        put_len_prefixed(&mut index_plain, &largest);
        put_varint(&mut index_plain, self.max_ts);
        put_varint(&mut index_plain, index_off);
        self.plain = index_plain;
        let (_, index_len) = self.write_unit(INDEX_POSITION)?;
        self.plain = filter_plain;
        let (filter_off, filter_len) = self.write_unit(FILTER_POSITION)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&index_off.to_le_bytes());
        footer.extend_from_slice(&index_len.to_le_bytes());
        footer.extend_from_slice(&filter_off.to_le_bytes());
        footer.extend_from_slice(&filter_len.to_le_bytes());
        footer.extend_from_slice(&self.sealer.key_id().to_le_bytes());
        footer.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        footer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        footer.extend_from_slice(&0u16.to_le_bytes());
        footer.extend_from_slice(MAGIC);
        debug_assert_eq!(footer.len(), FOOTER_LEN);
        self.file.append(&footer).map_err(|e| Error::io(&name, e))?;
        self.file.sync().map_err(|e| Error::io(&name, e))?;
        Ok(TableMeta {
            file_no: self.file_no,
            size: self.offset + FOOTER_LEN as u64,
            key_id: self.sealer.key_id(),
            entries: self.entries,
            smallest: self.smallest,
            largest,
            max_ts: self.max_ts,
        })
    }
}

fn encode_index(index: &[IndexEntry], out: &mut Vec<u8>) {
    put_varint(out, index.len() as u64);
    for e in index {
        put_varint(out, e.offset);
        put_varint(out, u64::from(e.len));
        put_len_prefixed(out, &e.last_key);
        out.extend_from_slice(&e.last_ts.to_le_bytes());
    }
}

/// The footer's fields.
pub(crate) struct Footer {
    index_off: u64,
    index_len: u32,
    filter_off: u64,
    filter_len: u32,
    key_id: u32,
    block_count: u32,
}

pub(crate) fn decode_footer(b: &[u8]) -> std::result::Result<Footer, &'static str> {
    let mut r = Reader::new(b);
    let f = (|| {
        Ok::<_, crate::codec::DecodeError>(Footer {
            index_off: r.u64("index offset")?,
            index_len: r.u32("index length")?,
            filter_off: r.u64("filter offset")?,
            filter_len: r.u32("filter length")?,
            key_id: r.u32("key id")?,
            block_count: r.u32("block count")?,
        })
    })()
    .map_err(|e| e.what)?;
    let version = r.u16("format version").map_err(|e| e.what)?;
    let reserved = r.u16("reserved").map_err(|e| e.what)?;
    let magic = r.bytes(8, "magic").map_err(|e| e.what)?;
    if magic != MAGIC {
        return Err("bad table magic");
    }
    if version != FORMAT_VERSION {
        return Err("unsupported table format version");
    }
    if reserved != 0 {
        return Err("reserved footer field is not zero");
    }
    Ok(f)
}

/// An open table: pinned index and filter, blocks read through the shared cache.
pub(crate) struct Table {
    pub(crate) meta: TableMeta,
    name: String,
    file: Arc<dyn ReadableFile>,
    sealer: Sealer,
    index: Vec<IndexEntry>,
    bloom: Bloom,
    cache: Arc<BlockCache>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("file", &self.name).finish()
    }
}

impl Table {
    /// Opens and authenticates footer, index and filter.
    pub(crate) fn open(
        storage: &dyn Storage,
        keys: &KeyRing,
        file_no: u64,
        cache: Arc<BlockCache>,
    ) -> Result<Table> {
        let name = file_name(file_no);
        let file = storage.open(&name).map_err(|e| Error::io(&name, e))?;
        let size = file.len().map_err(|e| Error::io(&name, e))?;
        if size < FOOTER_LEN as u64 {
            return Err(Error::format(&name, 0, "file shorter than a table footer"));
        }
        let footer_at = size - FOOTER_LEN as u64;
        let mut fb = [0u8; FOOTER_LEN];
        file.read_exact_at(footer_at, &mut fb)
            .map_err(|e| Error::io(&name, e))?;
        let footer = decode_footer(&fb).map_err(|r| Error::format(&name, footer_at, r))?;
        let sealer = keys.sealer_for(footer.key_id).ok_or_else(|| {
            Error::integrity(
                &name,
                footer_at,
                "table sealed under a key this store does not have",
            )
        })?;
        let read_unit = |off: u64, len: u32, position: u64| -> Result<Vec<u8>> {
            let end = off.checked_add(u64::from(len)).filter(|e| *e <= footer_at);
            if end.is_none() || len > MAX_UNIT {
                return Err(Error::integrity(
                    &name,
                    footer_at,
                    "footer names a unit outside the file",
                ));
            }
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(off, &mut buf)
                .map_err(|e| Error::io(&name, e))?;
            open_unit(&sealer, &name, file_no, off, position, buf)
        };
        if footer.filter_off.checked_add(u64::from(footer.filter_len)) != Some(footer_at) {
            return Err(Error::integrity(
                &name,
                footer_at,
                "the filter does not end at the footer",
            ));
        }
        let index_plain = read_unit(footer.index_off, footer.index_len, INDEX_POSITION)?;
        let filter_plain = read_unit(footer.filter_off, footer.filter_len, FILTER_POSITION)?;
        let (index, entries, smallest, largest, max_ts) = decode_index(&index_plain, &footer)
            .map_err(|e| e.into_error(&name, footer.index_off))?;
        let bloom = Bloom::decode(&filter_plain)
            .ok_or_else(|| Error::format(&name, footer.filter_off, "malformed filter block"))?;
        Ok(Table {
            meta: TableMeta {
                file_no,
                size,
                key_id: footer.key_id,
                entries,
                smallest,
                largest,
                max_ts,
            },
            name,
            file,
            sealer,
            index,
            bloom,
            cache,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn block_count(&self) -> usize {
        self.index.len()
    }

    /// Memory pinned by this table (index and filter).
    pub(crate) fn pinned_memory(&self) -> usize {
        self.bloom.memory()
            + self
                .index
                .iter()
                .map(|e| e.last_key.len() + 40)
                .sum::<usize>()
    }

    /// Reads, authenticates and decodes block `i`, through the cache.
    pub(crate) fn block(&self, i: usize) -> Result<Arc<Block>> {
        self.block_with(i, true)
    }

    /// Block `i` from the cache if it is there; otherwise read, and cache it only if
    /// `fill_cache` (bulk scans and compaction pass false so they do not evict hot blocks).
    pub(crate) fn block_with(&self, i: usize, fill_cache: bool) -> Result<Arc<Block>> {
        let cache_key = (self.meta.file_no, i as u32);
        if let Some(b) = self.cache.get(&cache_key) {
            return Ok(b);
        }
        let b = Arc::new(self.read_block(i)?);
        if fill_cache {
            self.cache.insert(cache_key, b.clone());
        }
        Ok(b)
    }

    /// Reads block `i` from the file, bypassing the cache.
    pub(crate) fn read_block(&self, i: usize) -> Result<Block> {
        let e = &self.index[i];
        let mut buf = vec![0u8; e.len as usize];
        self.file
            .read_exact_at(e.offset, &mut buf)
            .map_err(|err| Error::io(&self.name, err))?;
        let plain = open_unit(
            &self.sealer,
            &self.name,
            self.meta.file_no,
            e.offset,
            i as u64,
            buf,
        )?;
        Block::decode(plain).map_err(|d| d.into_error(&self.name, e.offset))
    }

    pub(crate) fn decode_err(&self, block: usize, d: crate::codec::DecodeError) -> Error {
        d.into_error(&self.name, self.index[block].offset)
    }

    /// The newest version of `key` at or below `read_ts`, if this table has one.
    pub(crate) fn get(&self, key: &[u8], read_ts: u64, hash: u64) -> Result<Option<Record>> {
        if key < self.meta.smallest.as_slice()
            || key > self.meta.largest.as_slice()
            || !self.bloom.may_contain(hash)
        {
            return Ok(None);
        }
        let head = key_head(key);
        let bi = self.index.partition_point(|e| {
            e.cmp_key(head, key).then(read_ts.cmp(&e.last_ts)) == Ordering::Less
        });
        if bi >= self.index.len() {
            return Ok(None);
        }
        let block = self.block(bi)?;
        let i = block
            .seek_internal(key, read_ts)
            .map_err(|d| self.decode_err(bi, d))?;
        if i >= block.len() {
            return Ok(None);
        }
        let r = block.get(i).map_err(|d| self.decode_err(bi, d))?;
        Ok((r.key == key).then(|| r.to_owned()))
    }

    /// Index of the first block that may hold user key >= `key`.
    pub(crate) fn block_for_key(&self, key: &[u8]) -> usize {
        let head = key_head(key);
        self.index
            .partition_point(|e| e.cmp_key(head, key) == Ordering::Less)
    }

    /// Checks the file against what the manifest says about it.
    pub(crate) fn check_manifest_entry(&self, m: &TableMeta) -> Result<()> {
        let same = self.meta.smallest == m.smallest
            && self.meta.largest == m.largest
            && self.meta.key_id == m.key_id
            && self.meta.size == m.size
            && self.meta.entries == m.entries;
        if same {
            Ok(())
        } else {
            Err(Error::integrity(
                &self.name,
                0,
                "table does not match its manifest entry",
            ))
        }
    }

    /// Drops this table's blocks from the shared cache (the table is being deleted).
    pub(crate) fn evict_from_cache(&self) {
        for i in 0..self.index.len() {
            self.cache.remove(&(self.meta.file_no, i as u32));
        }
    }

    /// Reads every block (bypassing the cache) and checks order; returns the entry count.
    pub(crate) fn verify(&self) -> Result<u64> {
        let mut n = 0u64;
        let mut prev: Option<(Vec<u8>, u64)> = None;
        for bi in 0..self.index.len() {
            let block = self.read_block(bi)?;
            for i in 0..block.len() {
                let r = block.get(i).map_err(|d| self.decode_err(bi, d))?;
                if let Some((pk, pts)) = &prev {
                    if cmp_internal(pk, *pts, r.key, r.ts) != Ordering::Less {
                        return Err(Error::integrity(
                            &self.name,
                            self.index[bi].offset,
                            "entries out of order",
                        ));
                    }
                }
                prev = Some((r.key.to_vec(), r.ts));
                n += 1;
            }
            let last = prev.as_ref().expect("blocks are never empty");
            if last.0 != self.index[bi].last_key || last.1 != self.index[bi].last_ts {
                return Err(Error::integrity(
                    &self.name,
                    self.index[bi].offset,
                    "block does not match its index entry",
                ));
            }
        }
        if n != self.meta.entries {
            return Err(Error::integrity(
                &self.name,
                0,
                "entry count does not match the index",
            ));
        }
        Ok(n)
    }
}

fn open_unit(
    sealer: &Sealer,
    name: &str,
    file_no: u64,
    offset: u64,
    position: u64,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>> {
    let place = Place {
        kind: FileKind::Table,
        file_no,
        position,
    };
    let base = buf.as_ptr() as usize;
    let (start, len) = {
        let plain = sealer.open(place, &mut buf).ok_or_else(|| {
            Error::integrity(
                name,
                offset,
                "unit failed authentication (modified, moved or wrong key)",
            )
        })?;
        (plain.as_ptr() as usize - base, plain.len())
    };
    buf.truncate(start + len);
    buf.drain(..start);
    Ok(buf)
}

pub(crate) type IndexParts = (Vec<IndexEntry>, u64, Vec<u8>, Vec<u8>, u64);

pub(crate) fn decode_index(
    b: &[u8],
    footer: &Footer,
) -> std::result::Result<IndexParts, crate::codec::DecodeError> {
    let mut r = Reader::new(b);
    let bad = |r: &Reader<'_>, what| crate::codec::DecodeError { at: r.pos(), what };
    let count = r.varint("block count")?;
    if count != u64::from(footer.block_count) || count == 0 {
        return Err(bad(&r, "index block count does not match the footer"));
    }
    let mut index = Vec::new();
    let mut expected_off = 0u64;
    for _ in 0..count {
        let offset = r.varint("block offset")?;
        let len = u32::try_from(r.varint("block length")?).map_err(|_| bad(&r, "block length"))?;
        let last_key = r.len_prefixed("block last key")?.to_vec();
        let last_ts = r.u64("block last timestamp")?;
        if offset != expected_off {
            return Err(bad(&r, "blocks are not contiguous"));
        }
        expected_off = offset + u64::from(len);
        index.push(IndexEntry {
            head: key_head(&last_key),
            offset,
            len,
            last_key,
            last_ts,
        });
    }
    let entries = r.varint("entry count")?;
    let smallest = r.len_prefixed("smallest key")?.to_vec();
    let largest = r.len_prefixed("largest key")?.to_vec();
    let max_ts = r.varint("max timestamp")?;
    let index_off = r.varint("index offset")?;
    if index_off != footer.index_off || expected_off != footer.index_off {
        return Err(bad(&r, "index offset does not match the footer"));
    }
    if footer.filter_off != footer.index_off + u64::from(footer.index_len) {
        return Err(bad(&r, "filter offset does not match the footer"));
    }
    if !r.is_empty() {
        return Err(bad(&r, "trailing bytes in the index"));
    }
    Ok((index, entries, smallest, largest, max_ts))
}

//! Keys: the [`KeyProvider`] boundary, the `KEYREGISTRY` file, and the [`Sealer`] that turns
//! plaintext units into sealed units bound to their place.
//!
//! The engine never sees the master key: it asks a [`KeyProvider`] to make, wrap and unwrap
//! data keys and to authenticate the registry. [`HostKeyProvider`] holds a master key in
//! process memory (key mode `host`); `sealdb-vault-client` implements the same trait over the
//! vault's socket (key mode `vault`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use sealdb_crypto::{AeadKey, MasterKey, SecretKey, SEAL_OVERHEAD};
use zeroize::Zeroize;

use crate::codec::Reader;
use crate::fs::Storage;
use crate::{Error, Result};

/// Version of the on-disk format written by this code (see docs/format.md).
pub(crate) const FORMAT_VERSION: u16 = 1;
/// Random identity of a store, bound into every unit's AAD.
pub(crate) type StoreId = [u8; 16];

pub(crate) const REGISTRY_FILE: &str = "KEYREGISTRY";
const REGISTRY_TMP: &str = "KEYREGISTRY.tmp";
const REGISTRY_MAGIC: &[u8; 8] = b"SEALKREG";

/// The kinds of file whose units are sealed; part of every unit's AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FileKind {
    Wal = 1,
    Table = 2,
    Manifest = 3,
    ValueLog = 4,
}

/// Where a unit lives: bound into its AAD, so a unit moved anywhere else fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub(crate) kind: FileKind,
    pub(crate) file_no: u64,
    /// Byte offset of the unit (WAL, manifest) or block index (tables).
    pub(crate) position: u64,
}

/// Bytes a plaintext (key mode `none`) unit adds: a CRC32 over AAD and payload.
const PLAIN_OVERHEAD: usize = 4;

/// Seals and opens units for one data key (or none). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Sealer {
    store_id: StoreId,
    key_id: u32,
    key: Option<Arc<KeyHandle>>,
}

impl Sealer {
    pub(crate) fn key_id(&self) -> u32 {
        self.key_id
    }

    pub(crate) fn overhead(&self) -> usize {
        if self.key.is_some() {
            SEAL_OVERHEAD
        } else {
            PLAIN_OVERHEAD
        }
    }

    fn aad(&self, place: Place) -> [u8; 44] {
        let mut a = [0u8; 44];
        a[..4].copy_from_slice(b"SDBU");
        a[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        a[6] = place.kind as u8;
        a[8..24].copy_from_slice(&self.store_id);
        a[24..32].copy_from_slice(&place.file_no.to_le_bytes());
        a[32..40].copy_from_slice(&place.position.to_le_bytes());
        a[40..44].copy_from_slice(&self.key_id.to_le_bytes());
        a
    }

    /// Appends the sealed form of `plain` to `out`.
    pub(crate) fn seal(&self, place: Place, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let aad = self.aad(place);
        match &self.key {
            Some(k) => {
                k.units.fetch_add(1, Ordering::Relaxed);
                k.aead.seal(&aad, plain, out)?
            }
            None => {
                out.extend_from_slice(plain);
                let mut h = crc32fast::Hasher::new();
                h.update(&aad);
                h.update(plain);
                out.extend_from_slice(&h.finalize().to_le_bytes());
            }
        }
        Ok(())
    }

    /// Opens a sealed unit in place; `None` when it fails authentication (or its checksum).
    pub(crate) fn open<'a>(&self, place: Place, unit: &'a mut [u8]) -> Option<&'a mut [u8]> {
        let aad = self.aad(place);
        match &self.key {
            Some(k) => k.aead.open_in_place(&aad, unit).ok(),
            None => {
                let n = unit.len().checked_sub(PLAIN_OVERHEAD)?;
                let (plain, crc) = unit.split_at_mut(n);
                let mut h = crc32fast::Hasher::new();
                h.update(&aad);
                h.update(plain);
                (h.finalize().to_le_bytes() == *crc).then_some(plain)
            }
        }
    }
}

/// The only way the engine gets data keys. Implemented by [`HostKeyProvider`] (master key in
/// this process) and by the vault client in `sealdb-vault-client` (master key inside a TEE).
///
/// Every method binds its result to `aad` chosen by the engine (store id, key id, creation
/// time), so a wrapped key moved to another store or entry does not unwrap. Checks answer
/// `Ok(false)` / `Ok(None)` when the data does not authenticate, and `Err` only when the
/// provider itself failed (for example, a vault that cannot be reached), so the two are never
/// confused.
pub trait KeyProvider: Send + Sync {
    /// A key-check value for a new store: proves later that the same master key is used.
    fn make_check_value(&self, aad: &[u8]) -> Result<Vec<u8>>;
    /// Whether a key-check value was made with this master key (the caller reports
    /// [`Error::WrongMasterKey`] when not).
    fn verify_check_value(&self, aad: &[u8], kcv: &[u8]) -> Result<bool>;
    /// Creates a new data key and returns it with its wrapped form.
    fn new_data_key(&self, aad: &[u8]) -> Result<(SecretKey, Vec<u8>)>;
    /// Unwraps a data key made by [`KeyProvider::new_data_key`]; `None` if it does not
    /// authenticate.
    fn unwrap_data_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<Option<SecretKey>>;
    /// Wraps an existing data key (used when the master key is rotated: the old provider
    /// unwraps, the new one wraps).
    fn rewrap_data_key(&self, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>>;
    /// Authenticates `data` (the registry body): returns a tag.
    fn authenticate(&self, data: &[u8]) -> Result<Vec<u8>>;
    /// Whether `tag` was made by [`KeyProvider::authenticate`] over `data`.
    fn verify(&self, data: &[u8], tag: &[u8]) -> Result<bool>;
}

/// Key mode `host`: a 32-byte master key held in this process (from a key file).
pub struct HostKeyProvider {
    master: MasterKey,
}

impl std::fmt::Debug for HostKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKeyProvider(REDACTED)")
    }
}

impl HostKeyProvider {
    /// Uses `master` as the master key.
    pub fn new(master: &SecretKey) -> Self {
        HostKeyProvider {
            master: MasterKey::new(master),
        }
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex digits (with an optional newline).
    pub fn from_key_file(path: &Path) -> Result<Self> {
        Ok(HostKeyProvider::new(&read_key_file(path)?))
    }
}

/// Reads a master key file: exactly 32 raw bytes, or 64 hex digits (with an optional
/// newline). The error names the file, never the content.
pub fn read_key_file(path: &Path) -> Result<SecretKey> {
    {
        let bad = |reason| Error::KeyFile {
            file: path.to_path_buf(),
            reason,
        };
        let mut raw = std::fs::read(path).map_err(|_| bad("cannot be read"))?;
        let result = match raw.len() {
            32 => SecretKey::from_slice(&raw).map_err(|_| bad("must hold 32 bytes")),
            64 | 65 => {
                let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
                let mut bytes = [0u8; 32];
                let ok = text.len() == 64
                    && text.chunks(2).zip(bytes.iter_mut()).all(|(pair, b)| {
                        match (hex_val(pair[0]), hex_val(pair[1])) {
                            (Some(h), Some(l)) => {
                                *b = h << 4 | l;
                                true
                            }
                            _ => false,
                        }
                    });
                let r = if ok {
                    SecretKey::from_slice(&bytes).map_err(|_| bad("must hold 32 bytes"))
                } else {
                    Err(bad("must hold 32 raw bytes or 64 hex digits"))
                };
                bytes.zeroize();
                r
            }
            _ => Err(bad("must hold 32 raw bytes or 64 hex digits")),
        };
        raw.zeroize();
        result
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl KeyProvider for HostKeyProvider {
    fn make_check_value(&self, aad: &[u8]) -> Result<Vec<u8>> {
        Ok(self.master.check_value(aad)?)
    }
    fn verify_check_value(&self, aad: &[u8], kcv: &[u8]) -> Result<bool> {
        Ok(self.master.verify_check_value(aad, kcv))
    }
    fn new_data_key(&self, aad: &[u8]) -> Result<(SecretKey, Vec<u8>)> {
        Ok(self.master.new_data_key(aad)?)
    }
    fn unwrap_data_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<Option<SecretKey>> {
        Ok(self.master.unwrap(aad, wrapped))
    }
    fn rewrap_data_key(&self, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>> {
        Ok(self.master.wrap(aad, key)?)
    }
    fn authenticate(&self, data: &[u8]) -> Result<Vec<u8>> {
        Ok(self.master.authenticate(data)?)
    }
    fn verify(&self, data: &[u8], tag: &[u8]) -> Result<bool> {
        Ok(self.master.verify_tag(data, tag))
    }
}

/// The state of a data key in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// New units are sealed under it.
    Active,
    /// No longer active; live files may still use it.
    InUse,
    /// No live file uses it; its wrapped material is kept until the retention ends.
    Retired,
    /// Its wrapped material is gone from the registry (crypto-shredded): nothing written
    /// under it can be decrypted with this store's keys any more.
    Destroyed,
}

impl KeyState {
    fn code(self) -> u8 {
        match self {
            KeyState::Active => 1,
            KeyState::InUse => 2,
            KeyState::Retired => 3,
            KeyState::Destroyed => 4,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(KeyState::Active),
            2 => Some(KeyState::InUse),
            3 => Some(KeyState::Retired),
            4 => Some(KeyState::Destroyed),
            _ => None,
        }
    }
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::InUse => "in-use",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// Units sealed under a key are counted in memory and reserved in the registry in chunks
/// of this size; after a restart a key's count resumes at its reservation (never lower).
const RESERVE_CHUNK: u64 = 1 << 24;

/// One registry entry as stored.
#[derive(Debug, Clone)]
struct RegistryEntry {
    id: u32,
    created: u64,
    state: KeyState,
    /// When it was retired (Unix seconds), 0 if not retired.
    retired_at: u64,
    /// Upper bound of units sealed under it, as far as the registry knows.
    units_reserved: u64,
    /// Empty when destroyed.
    wrapped: Vec<u8>,
}

fn wrap_aad(store_id: &StoreId, id: u32, created: u64) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(b"SDBK");
    a[4..20].copy_from_slice(store_id);
    a[20..24].copy_from_slice(&id.to_le_bytes());
    a[24..32].copy_from_slice(&created.to_le_bytes());
    a
}

fn kcv_aad(store_id: &StoreId) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[..4].copy_from_slice(b"SDBC");
    a[4..].copy_from_slice(store_id);
    a
}

/// The decoded, authenticated registry (without plaintext keys).
#[derive(Debug, Clone)]
struct Registry {
    store_id: StoreId,
    generation: u64,
    kcv: Vec<u8>,
    entries: Vec<RegistryEntry>,
}

impl Registry {
    /// Body bytes (everything the trailing tag authenticates).
    fn encode_body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.entries.len() * 96);
        b.extend_from_slice(REGISTRY_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.store_id);
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&(self.kcv.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.kcv);
        b.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.id.to_le_bytes());
            b.extend_from_slice(&e.created.to_le_bytes());
            b.push(e.state.code());
            b.extend_from_slice(&e.retired_at.to_le_bytes());
            b.extend_from_slice(&e.units_reserved.to_le_bytes());
            b.extend_from_slice(&(e.wrapped.len() as u16).to_le_bytes());
            b.extend_from_slice(&e.wrapped);
        }
        b
    }
}

/// One entry of a registry file before authentication.
pub(crate) struct RawEntry<'a> {
    id: u32,
    created: u64,
    state: u8,
    retired_at: u64,
    units_reserved: u64,
    wrapped: &'a [u8],
}

/// The parts of a registry file before authentication; see [`decode_registry`].
pub(crate) struct RawRegistry<'a> {
    store_id: StoreId,
    generation: u64,
    kcv: &'a [u8],
    entries: Vec<RawEntry<'a>>,
    body: &'a [u8],
    tag: &'a [u8],
}

/// Decodes a `KEYREGISTRY` file without any key (structure only). Never panics.
pub(crate) fn decode_registry(buf: &[u8]) -> Result<RawRegistry<'_>> {
    let e = |d: crate::codec::DecodeError| d.into_error(REGISTRY_FILE, 0);
    if buf.len() < SEAL_OVERHEAD {
        return Err(Error::format(
            REGISTRY_FILE,
            0,
            "file shorter than its authentication tag",
        ));
    }
    let (body, tag) = buf.split_at(buf.len() - SEAL_OVERHEAD);
    let mut r = Reader::new(body);
    if r.bytes(8, "magic").map_err(e)? != REGISTRY_MAGIC {
        return Err(Error::format(
            REGISTRY_FILE,
            0,
            "bad magic (not a sealdb key registry)",
        ));
    }
    let version = r.u16("format version").map_err(e)?;
    if version != FORMAT_VERSION {
        return Err(Error::format(
            REGISTRY_FILE,
            8,
            format!("unsupported format version {version}"),
        ));
    }
    let store_id = r.array::<16>("store id").map_err(e)?;
    let generation = r.u64("generation").map_err(e)?;
    let kcv_len = r.u16("key-check value length").map_err(e)?;
    let kcv = r.bytes(kcv_len as usize, "key-check value").map_err(e)?;
    let count = r.u32("entry count").map_err(e)?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let id = r.u32("key id").map_err(e)?;
        let created = r.u64("creation time").map_err(e)?;
        let state = r.u8("key state").map_err(e)?;
        let retired_at = r.u64("retirement time").map_err(e)?;
        let units_reserved = r.u64("reserved units").map_err(e)?;
        let wl = r.u16("wrapped key length").map_err(e)?;
        let wrapped = r.bytes(wl as usize, "wrapped key").map_err(e)?;
        entries.push(RawEntry {
            id,
            created,
            state,
            retired_at,
            units_reserved,
            wrapped,
        });
    }
    if !r.is_empty() {
        return Err(Error::format(
            REGISTRY_FILE,
            r.pos() as u64,
            "trailing bytes after the entries",
        ));
    }
    Ok(RawRegistry {
        store_id,
        generation,
        kcv,
        entries,
        body,
        tag,
    })
}

/// An unwrapped data key in memory, with the count of units sealed under it.
pub(crate) struct KeyHandle {
    aead: AeadKey,
    units: AtomicU64,
}

impl KeyHandle {
    fn new(key: &SecretKey, units: u64) -> Arc<Self> {
        Arc::new(KeyHandle {
            aead: AeadKey::new(key),
            units: AtomicU64::new(units),
        })
    }
}

/// When keys rotate and how long retired keys are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyPolicy {
    /// Rotate the active key once it is this old (seconds).
    pub(crate) rotation_interval: Option<u64>,
    /// Rotate the active key before it seals this many units.
    pub(crate) max_units: u64,
}

/// Data keys of an open store: the registry, the provider, and unwrapped keys by id.
pub(crate) struct KeyRing {
    store_id: StoreId,
    encrypted: bool,
    provider: RwLock<Option<Arc<dyn KeyProvider>>>,
    /// Serializes registry rewrites (rotation, reservation, retirement, master rotation).
    writer: Mutex<()>,
    inner: RwLock<KeyRingInner>,
    /// After a key-provider failure: upkeep waits until then.
    upkeep_after: Mutex<Option<std::time::Instant>>,
}

struct KeyRingInner {
    registry: Option<Registry>,
    keys: BTreeMap<u32, Arc<KeyHandle>>,
    active: u32,
}

/// A data key as reported by [`crate::Db::encryption_status`] and `info`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key id (as found in file headers).
    pub id: u32,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Registry state.
    pub state: KeyState,
    /// When it was retired (Unix seconds), if it was.
    pub retired_at: Option<u64>,
    /// Units sealed under it so far (an upper bound after a restart).
    pub units_sealed: u64,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn not_encrypted() -> Error {
    Error::InvalidArgument("the store is not encrypted")
}

impl KeyRing {
    /// A store without encryption.
    pub(crate) fn plain(store_id: StoreId) -> Self {
        KeyRing {
            store_id,
            encrypted: false,
            provider: RwLock::new(None),
            writer: Mutex::new(()),
            upkeep_after: Mutex::new(None),
            inner: RwLock::new(KeyRingInner {
                registry: None,
                keys: BTreeMap::new(),
                active: 0,
            }),
        }
    }

    /// Creates a new registry with one active data key and writes it atomically.
    pub(crate) fn create(
        storage: &dyn Storage,
        store_id: StoreId,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<Self> {
        let kcv = provider.make_check_value(&kcv_aad(&store_id))?;
        let created = now_secs();
        let id = 1;
        let (key, wrapped) = provider.new_data_key(&wrap_aad(&store_id, id, created))?;
        let registry = Registry {
            store_id,
            generation: 1,
            kcv,
            entries: vec![RegistryEntry {
                id,
                created,
                state: KeyState::Active,
                retired_at: 0,
                units_reserved: RESERVE_CHUNK,
                wrapped,
            }],
        };
        write_registry(storage, provider.as_ref(), &registry)?;
        let mut keys = BTreeMap::new();
        keys.insert(id, KeyHandle::new(&key, 0));
        Ok(KeyRing {
            store_id,
            encrypted: true,
            provider: RwLock::new(Some(provider)),
            writer: Mutex::new(()),
            upkeep_after: Mutex::new(None),
            inner: RwLock::new(KeyRingInner {
                registry: Some(registry),
                keys,
                active: id,
            }),
        })
    }

    /// Loads the registry: checks the master key first (nothing else is read before), then the
    /// registry's integrity, then unwraps every data key that is not destroyed.
    pub(crate) fn load(storage: &dyn Storage, provider: Arc<dyn KeyProvider>) -> Result<Self> {
        let buf = storage
            .read_all(REGISTRY_FILE)
            .map_err(|e| Error::io(REGISTRY_FILE, e))?;
        let raw = decode_registry(&buf)?;
        if !provider.verify_check_value(&kcv_aad(&raw.store_id), raw.kcv)? {
            return Err(Error::WrongMasterKey(storage.location()));
        }
        if !provider.verify(raw.body, raw.tag)? {
            return Err(Error::integrity(
                REGISTRY_FILE,
                raw.body.len() as u64,
                "registry authentication failed (modified or torn)",
            ));
        }
        let mut entries = Vec::new();
        let mut keys = BTreeMap::new();
        let mut active = None;
        for e in &raw.entries {
            let state = KeyState::from_code(e.state).ok_or_else(|| {
                Error::format(REGISTRY_FILE, 0, format!("unknown state of key {}", e.id))
            })?;
            if state != KeyState::Destroyed {
                let key = provider
                    .unwrap_data_key(&wrap_aad(&raw.store_id, e.id, e.created), e.wrapped)?
                    .ok_or_else(|| {
                        Error::integrity(REGISTRY_FILE, 0, "a wrapped data key failed to unwrap")
                    })?;
                keys.insert(e.id, KeyHandle::new(&key, e.units_reserved));
            }
            if state == KeyState::Active {
                active = Some(e.id);
            }
            entries.push(RegistryEntry {
                id: e.id,
                created: e.created,
                state,
                retired_at: e.retired_at,
                units_reserved: e.units_reserved,
                wrapped: e.wrapped.to_vec(),
            });
        }
        let active = active.ok_or_else(|| Error::format(REGISTRY_FILE, 0, "no active data key"))?;
        let registry = Registry {
            store_id: raw.store_id,
            generation: raw.generation,
            kcv: raw.kcv.to_vec(),
            entries,
        };
        Ok(KeyRing {
            store_id: raw.store_id,
            encrypted: true,
            provider: RwLock::new(Some(provider)),
            writer: Mutex::new(()),
            upkeep_after: Mutex::new(None),
            inner: RwLock::new(KeyRingInner {
                registry: Some(registry),
                keys,
                active,
            }),
        })
    }

    pub(crate) fn store_id(&self) -> StoreId {
        self.store_id
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    fn provider(&self) -> Result<Arc<dyn KeyProvider>> {
        self.provider.read().clone().ok_or_else(not_encrypted)
    }

    /// The sealer for new units (the active data key).
    pub(crate) fn active_sealer(&self) -> Sealer {
        let inner = self.inner.read();
        Sealer {
            store_id: self.store_id,
            key_id: inner.active,
            key: inner.keys.get(&inner.active).cloned(),
        }
    }

    /// The sealer for a unit sealed under `key_id`; `None` if the store has no such key (or it
    /// was destroyed; or, in an encrypted store, for key id 0: plaintext is never accepted).
    pub(crate) fn sealer_for(&self, key_id: u32) -> Option<Sealer> {
        if !self.encrypted {
            return (key_id == 0).then_some(Sealer {
                store_id: self.store_id,
                key_id: 0,
                key: None,
            });
        }
        let inner = self.inner.read();
        inner.keys.get(&key_id).map(|k| Sealer {
            store_id: self.store_id,
            key_id,
            key: Some(k.clone()),
        })
    }

    /// Applies `change` (given the current provider) to a copy of the registry, writes it
    /// atomically, authenticated by `signer` (default: the current provider), then publishes
    /// it. Slow work (wrapping keys) happens in `change` without blocking readers of keys.
    /// Callers hold `writer`.
    fn rewrite<T>(
        &self,
        storage: &dyn Storage,
        signer: Option<&dyn KeyProvider>,
        change: impl FnOnce(&mut Registry, &dyn KeyProvider) -> Result<T>,
        publish: impl FnOnce(&mut KeyRingInner, &T),
    ) -> Result<T> {
        let provider = self.provider()?;
        let mut registry = self
            .inner
            .read()
            .registry
            .clone()
            .ok_or_else(not_encrypted)?;
        let out = change(&mut registry, provider.as_ref())?;
        registry.generation += 1;
        write_registry(storage, signer.unwrap_or(provider.as_ref()), &registry)?;
        let mut inner = self.inner.write();
        inner.registry = Some(registry);
        publish(&mut inner, &out);
        Ok(out)
    }

    /// Creates a new data key, makes it active, and rewrites the registry. Returns its id.
    pub(crate) fn rotate(&self, storage: &dyn Storage) -> Result<u32> {
        let _w = self.writer.lock();
        let store_id = self.store_id;
        let (id, handle) = self.rewrite(
            storage,
            None,
            |reg, provider| {
                let id = reg.entries.iter().map(|e| e.id).max().unwrap_or(0) + 1;
                let created = now_secs();
                let (key, wrapped) = provider.new_data_key(&wrap_aad(&store_id, id, created))?;
                for e in &mut reg.entries {
                    if e.state == KeyState::Active {
                        e.state = KeyState::InUse;
                    }
                }
                reg.entries.push(RegistryEntry {
                    id,
                    created,
                    state: KeyState::Active,
                    retired_at: 0,
                    units_reserved: RESERVE_CHUNK,
                    wrapped,
                });
                Ok((id, KeyHandle::new(&key, 0)))
            },
            |_, _| {},
        )?;
        let mut inner = self.inner.write();
        inner.keys.insert(id, handle);
        inner.active = id;
        Ok(id)
    }

    /// Whether key upkeep can no longer wait for an absent key provider: the active key has
    /// sealed all the units the registry reserved for it (more could not be accounted for
    /// after a crash) or reached the rotation limit.
    pub(crate) fn must_upkeep_now(&self, policy: &KeyPolicy) -> bool {
        let (units, reserved) = self.active_units();
        units >= reserved || units >= policy.max_units
    }

    /// After a key-provider failure: key upkeep waits `d` before it asks again.
    pub(crate) fn postpone_upkeep(&self, d: std::time::Duration) {
        let until = std::time::Instant::now() + d;
        *self.upkeep_after.lock() = Some(until);
    }

    /// Whether key upkeep is waiting after a key-provider failure.
    pub(crate) fn upkeep_postponed(&self) -> bool {
        let mut slot = self.upkeep_after.lock();
        match *slot {
            Some(t) if std::time::Instant::now() < t => true,
            Some(_) => {
                *slot = None;
                false
            }
            None => false,
        }
    }

    /// Units sealed under the active key and units reserved for it.
    fn active_units(&self) -> (u64, u64) {
        let inner = self.inner.read();
        let Some(reg) = inner.registry.as_ref() else {
            return (0, u64::MAX);
        };
        let reserved = reg
            .entries
            .iter()
            .find(|e| e.id == inner.active)
            .map_or(0, |e| e.units_reserved);
        let units = inner
            .keys
            .get(&inner.active)
            .map_or(0, |h| h.units.load(Ordering::Relaxed));
        (units, reserved)
    }

    /// Rotates by age or unit count, or extends the active key's unit reservation, when due.
    /// Cheap when nothing is due. Returns whether the active key changed.
    pub(crate) fn maintain(&self, storage: &dyn Storage, policy: &KeyPolicy) -> Result<bool> {
        if !self.encrypted {
            return Ok(false);
        }
        let (units, created, reserved) = {
            let inner = self.inner.read();
            let Some(reg) = inner.registry.as_ref() else {
                return Ok(false);
            };
            let Some(e) = reg.entries.iter().find(|e| e.id == inner.active) else {
                return Ok(false);
            };
            let units = inner
                .keys
                .get(&inner.active)
                .map_or(0, |h| h.units.load(Ordering::Relaxed));
            (units, e.created, e.units_reserved)
        };
        let too_old = policy
            .rotation_interval
            .is_some_and(|i| now_secs().saturating_sub(created) >= i);
        if too_old || units >= policy.max_units {
            self.rotate(storage)?;
            return Ok(true);
        }
        if units + RESERVE_CHUNK / 2 >= reserved {
            let _w = self.writer.lock();
            self.rewrite(
                storage,
                None,
                |reg, _| {
                    let active = reg
                        .entries
                        .iter_mut()
                        .find(|e| e.state == KeyState::Active)
                        .ok_or_else(|| Error::format(REGISTRY_FILE, 0, "no active data key"))?;
                    active.units_reserved = units.max(active.units_reserved) + RESERVE_CHUNK;
                    Ok(())
                },
                |_, _| {},
            )?;
        }
        Ok(false)
    }

    /// Retires keys no live unit uses and destroys retired keys past their retention.
    /// `in_use` must hold every key id of every live file.
    pub(crate) fn retire_unused(
        &self,
        storage: &dyn Storage,
        in_use: &std::collections::BTreeSet<u32>,
        retention: u64,
    ) -> Result<()> {
        if !self.encrypted {
            return Ok(());
        }
        let _w = self.writer.lock();
        let now = now_secs();
        // A key is also in use while anything outside the ring holds it: a table build or a
        // WAL writer still sealing under it, a reader of a table written under it.
        let mut in_use = in_use.clone();
        {
            let inner = self.inner.read();
            for (id, handle) in &inner.keys {
                if Arc::strong_count(handle) > 1 {
                    in_use.insert(*id);
                }
            }
        }
        let in_use = &in_use;
        let due = |e: &RegistryEntry| match e.state {
            KeyState::InUse => !in_use.contains(&e.id),
            KeyState::Retired => {
                !in_use.contains(&e.id) && now.saturating_sub(e.retired_at) >= retention
            }
            KeyState::Active | KeyState::Destroyed => false,
        };
        let any_due = {
            let inner = self.inner.read();
            inner
                .registry
                .as_ref()
                .is_some_and(|r| r.entries.iter().any(due))
        };
        if !any_due {
            return Ok(());
        }
        self.rewrite(
            storage,
            None,
            |reg, _| {
                let mut destroyed = Vec::new();
                for e in &mut reg.entries {
                    if e.state == KeyState::InUse && !in_use.contains(&e.id) {
                        e.state = KeyState::Retired;
                        e.retired_at = now;
                    }
                    if e.state == KeyState::Retired
                        && now.saturating_sub(e.retired_at) >= retention
                        && !in_use.contains(&e.id)
                    {
                        e.state = KeyState::Destroyed;
                        e.wrapped.zeroize();
                        e.wrapped.clear();
                        destroyed.push(e.id);
                    }
                }
                Ok(destroyed)
            },
            |inner, destroyed| {
                for id in destroyed {
                    inner.keys.remove(id);
                }
            },
        )?;
        Ok(())
    }

    /// Re-wraps every data key under a new master key and switches to it. Data files are not
    /// touched; readers and writers are blocked only while the new registry is published.
    pub(crate) fn rotate_master(
        &self,
        storage: &dyn Storage,
        new: Arc<dyn KeyProvider>,
    ) -> Result<()> {
        let _w = self.writer.lock();
        let store_id = self.store_id;
        self.rewrite(
            storage,
            Some(new.as_ref()),
            |registry, old| {
                for e in &mut registry.entries {
                    if e.state == KeyState::Destroyed {
                        continue;
                    }
                    let aad = wrap_aad(&store_id, e.id, e.created);
                    let key = old.unwrap_data_key(&aad, &e.wrapped)?.ok_or_else(|| {
                        Error::integrity(REGISTRY_FILE, 0, "a wrapped data key failed to unwrap")
                    })?;
                    e.wrapped = new.rewrap_data_key(&aad, &key)?;
                }
                registry.kcv = new.make_check_value(&kcv_aad(&store_id))?;
                Ok(())
            },
            |_, _| {},
        )?;
        *self.provider.write() = Some(new);
        Ok(())
    }

    /// The keys in the registry.
    pub(crate) fn key_infos(&self) -> Vec<KeyInfo> {
        let inner = self.inner.read();
        inner
            .registry
            .as_ref()
            .map(|r| {
                r.entries
                    .iter()
                    .map(|e| KeyInfo {
                        id: e.id,
                        created: e.created,
                        state: e.state,
                        retired_at: (e.retired_at != 0).then_some(e.retired_at),
                        units_sealed: inner
                            .keys
                            .get(&e.id)
                            .map_or(e.units_reserved, |h| h.units.load(Ordering::Relaxed)),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creation time of each key still in the registry (for the rekey policy).
    pub(crate) fn creation_times(&self) -> BTreeMap<u32, u64> {
        self.key_infos()
            .into_iter()
            .map(|k| (k.id, k.created))
            .collect()
    }
}

fn write_registry(
    storage: &dyn Storage,
    provider: &dyn KeyProvider,
    registry: &Registry,
) -> Result<()> {
    let mut bytes = registry.encode_body();
    let tag = provider.authenticate(&bytes)?;
    bytes.extend_from_slice(&tag);
    crate::version::write_atomic(storage, REGISTRY_FILE, REGISTRY_TMP, &bytes)
}

/// The size a sealed unit of `plain_len` bytes takes on disk with this sealer.
pub(crate) fn sealed_len(sealer: &Sealer, plain_len: usize) -> usize {
    plain_len + sealer.overhead()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemStorage;

    fn provider() -> Arc<dyn KeyProvider> {
        Arc::new(HostKeyProvider::new(&SecretKey::generate().unwrap()))
    }

    #[test]
    fn registry_round_trip_wrong_key_and_tamper() {
        let s = MemStorage::new();
        let p = provider();
        let ring = KeyRing::create(&s, [7; 16], p.clone()).unwrap();
        ring.rotate(&s).unwrap();
        let loaded = KeyRing::load(&s, p.clone()).unwrap();
        assert_eq!(loaded.active_sealer().key_id(), 2);
        assert_eq!(loaded.key_infos().len(), 2);
        assert!(matches!(
            KeyRing::load(&s, provider()),
            Err(Error::WrongMasterKey(_))
        ));
        let len = s.read_all(REGISTRY_FILE).unwrap().len();
        for i in 0..len {
            let t = s.crash_image(|_, _| 0);
            t.with_file_mut(REGISTRY_FILE, |d| d[i] ^= 0x20).unwrap();
            let r = KeyRing::load(&t, p.clone());
            assert!(r.is_err(), "flipped byte {i} accepted");
        }
        let t = s.crash_image(|_, _| 0);
        t.with_file_mut(REGISTRY_FILE, |d| d.truncate(len - 3))
            .unwrap();
        assert!(KeyRing::load(&t, p).is_err());
    }

    #[test]
    fn units_are_bound_to_place_and_key() {
        let s = MemStorage::new();
        let ring = KeyRing::create(&s, [1; 16], provider()).unwrap();
        let sealer = ring.active_sealer();
        let place = Place {
            kind: FileKind::Table,
            file_no: 3,
            position: 9,
        };
        let mut unit = Vec::new();
        sealer.seal(place, b"secret", &mut unit).unwrap();
        assert_eq!(unit.len(), sealed_len(&sealer, 6));
        let mut u = unit.clone();
        assert_eq!(sealer.open(place, &mut u).unwrap(), b"secret");
        for other in [
            Place {
                position: 10,
                ..place
            },
            Place {
                file_no: 4,
                ..place
            },
            Place {
                kind: FileKind::Wal,
                ..place
            },
        ] {
            let mut u = unit.clone();
            assert!(sealer.open(other, &mut u).is_none());
        }
        assert!(
            ring.sealer_for(0).is_none(),
            "encrypted store must refuse key id 0"
        );
    }
}

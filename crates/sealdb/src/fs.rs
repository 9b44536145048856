//! The storage backend: every byte the engine reads or writes goes through [`Storage`].
//!
//! Three backends:
//! - [`StdStorage`]: real files in one directory (positional reads, `fsync`, directory fsync).
//! - [`MemStorage`]: in memory, with crash images: [`MemStorage::crash_image`] keeps only what
//!   was made durable (file bytes up to the last `sync`, names as of the last directory sync),
//!   optionally with a torn (partial) tail of unsynced bytes.
//! - Fault injection on [`MemStorage`]: [`MemStorage::fail_after`] makes the n-th following
//!   write or sync fail, as a full disk or a failing device would.
//!
//! Names are flat (no subdirectories): a store is one directory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// A file open for appending. Writes may be buffered until [`WritableFile::sync`] or
/// [`WritableFile::flush`].
pub trait WritableFile: Send {
    /// Appends bytes.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Hands buffered bytes to the OS (not durable).
    fn flush(&mut self) -> io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// A file open for positional reads. Shared between threads.
pub trait ReadableFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A directory of files. All engine I/O goes through this trait.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Creates (or truncates) a file for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn WritableFile>>;
    /// Opens a file for reading.
    fn open(&self, name: &str) -> io::Result<Arc<dyn ReadableFile>>;
    /// Reads a whole file.
    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        let f = self.open(name)?;
        let len = usize::try_from(f.len()?).map_err(|_| io::Error::other("file too large"))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(0, &mut buf)?;
        Ok(buf)
    }
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, name: &str) -> bool;
    /// Lists the file names.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Makes a file's contents durable, through a handle of its own (the file may be open
    /// for appending elsewhere; data handed to the OS by that writer is included).
    fn sync_file(&self, name: &str) -> io::Result<()>;
    /// A human-readable location (for error messages).
    fn location(&self) -> PathBuf;
}

/// Real files in one directory.
#[derive(Debug)]
pub struct StdStorage {
    dir: PathBuf,
}

impl StdStorage {
    /// Uses `dir`, creating it if `create` is set.
    pub fn new(dir: &Path, create: bool) -> io::Result<Self> {
        if create {
            std::fs::create_dir_all(dir)?;
        }
        Ok(StdStorage {
            dir: dir.to_path_buf(),
        })
    }
}

struct StdWritable {
    file: io::BufWriter<File>,
}

impl WritableFile for StdWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
}

struct StdReadable {
    file: File,
}

impl ReadableFile for StdReadable {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Storage for StdStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        Ok(Box::new(StdWritable {
            file: io::BufWriter::with_capacity(256 * 1024, file),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn ReadableFile>> {
        Ok(Arc::new(StdReadable {
            file: File::open(self.dir.join(name))?,
        }))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }
    fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(n) = entry.file_name().to_str() {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
    fn sync_file(&self, name: &str) -> io::Result<()> {
        File::open(self.dir.join(name))?.sync_data()
    }
    fn location(&self) -> PathBuf {
        self.dir.clone()
    }
}

#[derive(Default)]
struct MemFile {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Default)]
struct MemDir {
    /// Names as the running process sees them.
    live: BTreeMap<String, Arc<Mutex<MemFile>>>,
    /// Names as of the last directory sync (what survives a crash).
    durable: BTreeMap<String, Arc<Mutex<MemFile>>>,
}

/// An in-memory directory with crash images and fault injection, for tests.
#[derive(Clone, Default)]
pub struct MemStorage {
    dir: Arc<Mutex<MemDir>>,
    /// Writes and syncs left before one fails; negative means never.
    countdown: Arc<AtomicI64>,
}

impl std::fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemStorage")
    }
}

impl MemStorage {
    /// An empty directory that never fails.
    pub fn new() -> Self {
        let s = MemStorage::default();
        s.countdown.store(-1, Ordering::SeqCst);
        s
    }

    /// Makes the `n`-th following write or sync fail (0 = the next one), and all after it.
    pub fn fail_after(&self, n: i64) {
        self.countdown.store(n, Ordering::SeqCst);
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        self.countdown.store(-1, Ordering::SeqCst);
    }

    fn tick(&self) -> io::Result<()> {
        let mut cur = self.countdown.load(Ordering::SeqCst);
        loop {
            if cur < 0 {
                return Ok(());
            }
            if cur == 0 {
                return Err(io::Error::other("injected I/O fault"));
            }
            match self
                .countdown
                .compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// What a machine crash would leave: the names durable at the last directory sync, each
    /// file cut to its last sync plus `torn(name, unsynced_len)` further bytes (0 = none).
    pub fn crash_image(&self, mut torn: impl FnMut(&str, usize) -> usize) -> MemStorage {
        let dir = self.dir.lock();
        let mut out = MemDir::default();
        for (name, file) in &dir.durable {
            let f = file.lock();
            let unsynced = f.data.len() - f.synced;
            let keep = f.synced + torn(name, unsynced).min(unsynced);
            let copy = Arc::new(Mutex::new(MemFile {
                data: f.data[..keep].to_vec(),
                synced: keep,
            }));
            out.live.insert(name.clone(), copy.clone());
            out.durable.insert(name.clone(), copy);
        }
        MemStorage {
            dir: Arc::new(Mutex::new(out)),
            countdown: Arc::new(AtomicI64::new(-1)),
        }
    }

    /// Direct access to a file's bytes, to corrupt them in tests.
    pub fn with_file_mut<R>(&self, name: &str, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let dir = self.dir.lock();
        let file = dir.live.get(name)?;
        let mut file = file.lock();
        let r = f(&mut file.data);
        file.synced = file.synced.min(file.data.len());
        Some(r)
    }
}

struct MemWritable {
    file: Arc<Mutex<MemFile>>,
    storage: MemStorage,
}

impl WritableFile for MemWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.storage.tick()?;
        self.file.lock().data.extend_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.storage.tick()?;
        let mut f = self.file.lock();
        f.synced = f.data.len();
        Ok(())
    }
}

struct MemReadable {
    file: Arc<Mutex<MemFile>>,
}

impl ReadableFile for MemReadable {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.file.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > f.data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&f.data[start..end]);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.lock().data.len() as u64)
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name} not found"))
}

impl Storage for MemStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn WritableFile>> {
        self.tick()?;
        let file = Arc::new(Mutex::new(MemFile::default()));
        self.dir.lock().live.insert(name.to_string(), file.clone());
        Ok(Box::new(MemWritable {
            file,
            storage: self.clone(),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn ReadableFile>> {
        let dir = self.dir.lock();
        let file = dir.live.get(name).ok_or_else(|| not_found(name))?.clone();
        Ok(Arc::new(MemReadable { file }))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.tick()?;
        let mut dir = self.dir.lock();
        let file = dir.live.remove(from).ok_or_else(|| not_found(from))?;
        dir.live.insert(to.to_string(), file);
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        let mut dir = self.dir.lock();
        dir.live.remove(name).ok_or_else(|| not_found(name))?;
        Ok(())
    }
    fn exists(&self, name: &str) -> bool {
        self.dir.lock().live.contains_key(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.dir.lock().live.keys().cloned().collect())
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.tick()?;
        let mut dir = self.dir.lock();
        dir.durable = dir.live.clone();
        Ok(())
    }
    fn sync_file(&self, name: &str) -> io::Result<()> {
        self.tick()?;
        let dir = self.dir.lock();
        let mut f = dir.live.get(name).ok_or_else(|| not_found(name))?.lock();
        f.synced = f.data.len();
        Ok(())
    }
    fn location(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_image_keeps_only_durable_state() {
        let s = MemStorage::new();
        let mut a = s.create("a").unwrap();
        a.append(b"hello").unwrap();
        a.sync().unwrap();
        a.append(b" world").unwrap();
        s.sync_dir().unwrap();
        let mut b = s.create("b").unwrap();
        b.append(b"never named durably").unwrap();
        b.sync().unwrap();
        let img = s.crash_image(|_, _| 0);
        assert_eq!(img.read_all("a").unwrap(), b"hello");
        assert!(!img.exists("b"));
        let torn = s.crash_image(|_, n| n / 2);
        assert_eq!(torn.read_all("a").unwrap(), b"hello wo");
    }

    #[test]
    fn fault_countdown_fails_then_keeps_failing() {
        let s = MemStorage::new();
        let mut a = s.create("a").unwrap();
        s.fail_after(1);
        a.append(b"x").unwrap();
        assert!(a.append(b"y").is_err());
        assert!(a.sync().is_err());
        s.heal();
        a.sync().unwrap();
    }
}

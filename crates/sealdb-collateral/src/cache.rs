//! The on-disk collateral cache: one file per URL, replaced atomically.
//!
//! A file is named by the SHA-256 of its URL and holds one JSON object:
//!
//! ```json
//! {"format": "sealdb-collateral-cache-v1", "url": "https://…", "fetched_at": 1750377600,
//!  "expires_at": 1750464000, "headers": {"sgx-pck-crl-issuer-chain": "-----BEGIN…"},
//!  "body": "3082…"}
//! ```
//!
//! `body` is hex. An entry is served while `fetched_at <= now < expires_at`. Entries are
//! written to a temporary file, synced, renamed over the old one, and the directory synced,
//! so a crash leaves either the old entry or the new one. Nothing secret is cached: collateral
//! is public and signed by its vendor, so a modified entry makes verification fail, never
//! pass.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Response;

const FORMAT: &str = "sealdb-collateral-cache-v1";

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file or the directory could not be read or written.
    #[error("collateral cache {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A cache file is not an entry of this format, or not for the URL it is named after.
    #[error("collateral cache entry {path} is unreadable: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    format: String,
    url: String,
    fetched_at: u64,
    expires_at: u64,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A cached response, decoded and checked against the URL it should be for.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// When it was fetched (Unix seconds).
    pub fetched_at: u64,
    /// When it stops being served (Unix seconds).
    pub expires_at: u64,
    /// The response's headers that were kept.
    pub headers: BTreeMap<String, String>,
    /// The response body.
    pub body: Vec<u8>,
}

/// Decodes a cache file's bytes; `url` is the URL the entry must be for. Never panics.
pub fn decode_entry(bytes: &[u8], url: &str) -> Result<Decoded, String> {
    let e: Entry = serde_json::from_slice(bytes).map_err(|e| format!("not an entry: {e}"))?;
    if e.format != FORMAT {
        return Err(format!("format {:?}, expected {FORMAT:?}", e.format));
    }
    if e.url != url {
        return Err(format!("holds {:?}, not {url:?}", e.url));
    }
    if e.expires_at < e.fetched_at {
        return Err(format!(
            "expires_at {} is before fetched_at {}",
            e.expires_at, e.fetched_at
        ));
    }
    let body = hex::decode(&e.body).map_err(|err| format!("body: {err}"))?;
    Ok(Decoded {
        fetched_at: e.fetched_at,
        expires_at: e.expires_at,
        headers: e.headers,
        body,
    })
}

/// A directory of cached collateral responses.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    offline: bool,
}

impl Cache {
    /// Uses (and creates) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Cache {
            dir,
            offline: false,
        })
    }

    /// The conventional location: `$XDG_CACHE_HOME/sealdb/collateral`, else
    /// `$HOME/.cache/sealdb/collateral`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("sealdb").join("collateral"))
    }

    /// Serves only what the cache holds; never uses the network.
    pub fn offline(mut self) -> Self {
        self.offline = true;
        self
    }

    pub(crate) fn is_offline(&self) -> bool {
        self.offline
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, url: &str) -> PathBuf {
        let digest = hex::encode(sealdb_crypto::sha256(url.as_bytes()));
        self.dir.join(format!("{digest}.json"))
    }

    /// The fresh cached response for `url`, if any.
    pub(crate) fn load(&self, url: &str, now: u64) -> Result<Option<Response>, CacheError> {
        let path = self.path_of(url);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let d = decode_entry(&bytes, url).map_err(|detail| CacheError::Corrupt {
            path: path.clone(),
            detail,
        })?;
        if d.fetched_at <= now && now < d.expires_at {
            Ok(Some(Response {
                headers: d.headers,
                body: d.body,
            }))
        } else {
            Ok(None)
        }
    }

    /// Stores a response atomically: temporary file, fsync, rename, directory fsync.
    pub(crate) fn store(
        &self,
        url: &str,
        resp: &Response,
        fetched_at: u64,
        expires_at: u64,
    ) -> Result<(), CacheError> {
        let entry = Entry {
            format: FORMAT.into(),
            url: url.into(),
            fetched_at,
            expires_at,
            headers: resp.headers.clone(),
            body: hex::encode(&resp.body),
        };
        let bytes = serde_json::to_vec(&entry).map_err(|e| CacheError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let path = self.path_of(url);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CacheError::Io { path: p, source }
        };
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

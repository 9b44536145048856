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
//! `body` is hex. An entry is served while `fetched_at <= now < expires_at` and, unless its
//! content is immutable (a VCEK), while it is younger than the fetcher's maximum age. Only
//! collateral that verified the evidence when fetched is stored. Entries are written to a
//! temporary file, synced, renamed over the old one, and the directory synced, so a crash
//! leaves either the old entry or the new one. Nothing secret is cached: collateral
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

/// The largest cache file read (a response is at most 16 MiB, twice that in hex).
const MAX_FILE: u64 = 33 << 20;

/// A cached response, decoded and checked against the URL it should be for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) fetched_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

/// Decodes a cache file's bytes; `url` is the URL the entry must be for. Never panics.
pub(crate) fn decode_entry(bytes: &[u8], url: &str) -> Result<Decoded, String> {
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
    /// Only absolute paths count; `None` without one.
    pub fn default_dir() -> Option<PathBuf> {
        let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
        let base = std::env::var_os("XDG_CACHE_HOME")
            .and_then(absolute)
            .or_else(|| {
                std::env::var_os("HOME")
                    .and_then(absolute)
                    .map(|h| h.join(".cache"))
            })?;
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

    /// The fresh cached response for `url`, if any: not expired and, with `max_age`, not
    /// older than that.
    pub(crate) fn load(
        &self,
        url: &str,
        now: u64,
        max_age: Option<u64>,
    ) -> Result<Option<Response>, CacheError> {
        use std::io::Read;
        let path = self.path_of(url);
        let mut bytes = Vec::new();
        let read =
            std::fs::File::open(&path).and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes));
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        }
        if bytes.len() as u64 > MAX_FILE {
            return Err(CacheError::Corrupt {
                path,
                detail: format!("larger than {MAX_FILE} bytes"),
            });
        }
        let d = decode_entry(&bytes, url).map_err(|detail| CacheError::Corrupt {
            path: path.clone(),
            detail,
        })?;
        let young = max_age.is_none_or(|m| now < d.fetched_at.saturating_add(m));
        if d.fetched_at <= now && now < d.expires_at && young {
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
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CacheError::Io { path: p, source }
        };
        // A temporary file of its own (removed if anything fails), then rename and sync.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        tmp.write_all(&bytes).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_only_when_whole_and_for_their_url() {
        let good = br#"{"format":"sealdb-collateral-cache-v1","url":"u","fetched_at":1,"expires_at":2,"headers":{},"body":"00ff"}"#;
        let d = decode_entry(good, "u").unwrap();
        assert_eq!(d.body, vec![0, 0xff]);
        assert!(decode_entry(good, "v").unwrap_err().contains("not \"v\""));
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"format":"x","url":"u","fetched_at":1,"expires_at":2,"headers":{},"body":""}"#,
            br#"{"format":"sealdb-collateral-cache-v1","url":"u","fetched_at":3,"expires_at":2,"headers":{},"body":""}"#,
            br#"{"format":"sealdb-collateral-cache-v1","url":"u","fetched_at":1,"expires_at":2,"headers":{},"body":"0"}"#,
            br#"{"format":"sealdb-collateral-cache-v1","url":"u","fetched_at":1,"expires_at":2,"headers":{},"body":"","extra":1}"#,
        ] {
            assert!(decode_entry(bad, "u").is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn freshness_follows_expiry_and_the_callers_maximum_age() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let resp = Response {
            headers: BTreeMap::new(),
            body: b"crl".to_vec(),
        };
        cache.store("https://x/a", &resp, 100, 1_000).unwrap();
        assert_eq!(
            cache.load("https://x/a", 100, None).unwrap(),
            Some(resp.clone())
        );
        assert_eq!(
            cache.load("https://x/a", 999, None).unwrap(),
            Some(resp.clone())
        );
        assert_eq!(cache.load("https://x/a", 1_000, None).unwrap(), None);
        // Fetched "in the future": the clock went back; not served.
        assert_eq!(cache.load("https://x/a", 99, None).unwrap(), None);
        // A maximum age lowered after the entry was stored is honoured.
        assert_eq!(
            cache.load("https://x/a", 150, Some(60)).unwrap(),
            Some(resp)
        );
        assert_eq!(cache.load("https://x/a", 160, Some(60)).unwrap(), None);
        // Nothing else is left in the directory (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

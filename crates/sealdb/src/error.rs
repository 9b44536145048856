//! Errors, typed by what the caller can do about them.

use std::path::PathBuf;

/// The result type of every fallible sealdb operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Messages name the file and offset where that helps, and never contain
/// key material, keys or values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named file. The store may be poisoned afterwards.
    #[error("I/O error on {file}: {source}")]
    Io {
        /// The file (relative to the store directory) or directory concerned.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes failed authentication or a consistency check: the file was modified,
    /// moved, truncated in the middle, or written under a key this store does not know.
    /// No data from the unit was returned.
    #[error("integrity error in {file} at offset {offset}: {reason}")]
    Integrity {
        /// The file (relative to the store directory).
        file: String,
        /// Byte offset of the unit that failed.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },
    /// A file's bytes do not follow the on-disk format (bad magic, unknown version, bad length).
    #[error("format error in {file} at offset {offset}: {reason}")]
    Format {
        /// The file (relative to the store directory).
        file: String,
        /// Byte offset where decoding failed.
        offset: u64,
        /// What was expected.
        reason: String,
    },
    /// The master key given does not match the store's key-check value. Nothing was read
    /// beyond the key registry and no file was changed.
    #[error("wrong master key for the store in {0}")]
    WrongMasterKey(PathBuf),
    /// The store is encrypted and no key was given.
    #[error("the store in {0} is encrypted: a master key is required")]
    KeyRequired(PathBuf),
    /// A key was given for a store created without encryption.
    #[error("the store in {0} was created unencrypted; it cannot be opened with a key")]
    NotEncrypted(PathBuf),
    /// No store exists in the directory and `create_if_missing` is off.
    #[error("no store in {0}")]
    NotFound(PathBuf),
    /// Another process (or handle) holds the store's lock.
    #[error("the store in {0} is locked by another process")]
    Locked(PathBuf),
    /// A transaction read a key that a transaction committed after its start has written.
    /// Retry the transaction.
    #[error("transaction conflict: a key it read was changed by a later commit; retry")]
    Conflict,
    /// The transaction was already committed or discarded, or is read-only.
    #[error("transaction is {0}")]
    TxnState(&'static str),
    /// A write or fsync failed earlier; the store refuses further work. Close and reopen it.
    #[error("the store is poisoned by an earlier failed write or fsync; reopen it")]
    Poisoned,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// An argument was out of range (empty key, key or value too large, bad option).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A key file could not be used.
    #[error("key file {file}: {reason}")]
    KeyFile {
        /// The key file's path.
        file: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key provider failed (for example, a vault that cannot be reached or is not
    /// provisioned). Nothing was written; retry when the provider is back.
    #[error("key provider: {0}")]
    KeyProvider(String),
    /// A cryptographic operation failed for a reason other than authentication
    /// (for example the system random number generator).
    #[error("crypto error: {0}")]
    Crypto(#[from] sealdb_crypto::CryptoError),
}

impl Error {
    pub(crate) fn io(file: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            file: file.into(),
            source,
        }
    }

    pub(crate) fn integrity(file: impl Into<String>, offset: u64, reason: &'static str) -> Self {
        Error::Integrity {
            file: file.into(),
            offset,
            reason,
        }
    }

    pub(crate) fn format(file: impl Into<String>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Format {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// Whether this error reports stored data that failed authentication or format checks.
    pub fn is_integrity(&self) -> bool {
        matches!(self, Error::Integrity { .. } | Error::Format { .. })
    }
}

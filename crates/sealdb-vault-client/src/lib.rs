//! Key mode `vault`: the engine asks the vault for every master-key operation over the
//! vault's local Unix socket, so the master key never enters the engine's memory. Data keys
//! are released to the engine (it seals and opens blocks itself).
//!
//! ```no_run
//! use std::sync::Arc;
//! let provider = sealdb_vault_client::VaultKeyProvider::connect("/run/sealdb/vault.sock").unwrap();
//! let opts = sealdb::Options {
//!     key_provider: Some(Arc::new(provider)),
//!     ..sealdb::Options::default()
//! };
//! let db = sealdb::Db::open("store", opts).unwrap();
//! ```
#![forbid(unsafe_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sealdb::{Error, KeyProvider, Result};
use sealdb_crypto::SecretKey;
use sealdb_vault_proto::{read_message, write_message, Deadline, Message};

/// A connection to the vault, with a deadline for the request under way.
type Conn = Deadline<UnixStream>;

/// How long one request may take in all, sending it and reading the whole reply (they are
/// small; a vault that takes longer is treated as unreachable).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Associated data prefix of the data key that pins the vault's master key for the life of a
/// provider.
const IDENTITY_AAD: &[u8] = b"sealdb-vault-client identity v1 ";

/// A [`KeyProvider`] backed by a vault.
pub struct VaultKeyProvider {
    path: PathBuf,
    conn: Mutex<Option<Conn>>,
    /// A data key the vault made and wrapped at connect, under a random associated data:
    /// every reconnection must unwrap it to the same key, which only the same master key
    /// can do, so a vault restarted with another key (or anything else answering on the
    /// socket) is never used.
    identity: Option<Identity>,
}

struct Identity {
    aad: Vec<u8>,
    key: SecretKey,
    wrapped: Vec<u8>,
}

impl std::fmt::Debug for VaultKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeyProvider")
            .field("socket", &self.path)
            .finish()
    }
}

impl VaultKeyProvider {
    /// Connects to the vault's engine socket: the socket must belong to this user and the
    /// vault must be provisioned. Its master key is pinned for the life of the provider.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let mut p = VaultKeyProvider {
            path: path.as_ref().to_path_buf(),
            conn: Mutex::new(None),
            identity: None,
        };
        let mut stream = p.open()?;
        let mut nonce = [0u8; 16];
        sealdb_crypto::fill_random(&mut nonce)?;
        let aad = [IDENTITY_AAD, &nonce[..]].concat();
        let request = Message::NewDataKey { aad: aad.clone() };
        let reply = write_message(&mut stream, &request)
            .and_then(|_| read_message(&mut stream))
            .map_err(|e| p.fail(e))?;
        p.identity = match reply {
            Message::DataKey { key, wrapped } => Some(Identity { aad, key, wrapped }),
            Message::Error { message } => return Err(p.fail(message.escape_debug())),
            other => return Err(p.unexpected("NewDataKey", &other)),
        };
        *p.lock() = Some(stream);
        Ok(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        // The connection is replaced whole or dropped; a panic elsewhere leaves it usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, detail: impl std::fmt::Display) -> Error {
        Error::KeyProvider(format!("vault at {}: {detail}", self.path.display()))
    }

    /// A connection to a socket served by a process of this user.
    fn open(&self) -> Result<Conn> {
        let s = UnixStream::connect(&self.path).map_err(|e| self.fail(e))?;
        let cred = rustix::net::sockopt::socket_peercred(&s).map_err(|e| self.fail(e))?;
        if cred.uid != rustix::process::geteuid() {
            return Err(self.fail(format!(
                "the socket is served by user {}, not this user",
                cred.uid.as_raw()
            )));
        }
        Ok(Deadline::new(s, TIMEOUT))
    }

    /// A new connection, checked to reach a vault with the same master key as at connect.
    fn reopen(&self) -> Result<Conn> {
        let id = self
            .identity
            .as_ref()
            .ok_or_else(|| self.fail("no identity pinned"))?;
        let mut s = self.open()?;
        let request = Message::UnwrapDataKey {
            aad: id.aad.clone(),
            wrapped: id.wrapped.clone(),
        };
        let reply = write_message(&mut s, &request)
            .and_then(|_| read_message(&mut s))
            .map_err(|e| self.fail(e))?;
        match reply {
            Message::Unwrapped { key: Some(k) } if k.ct_eq(&id.key) => Ok(s),
            Message::Unwrapped { .. } => {
                Err(self.fail("the vault now holds another master key; refusing to use it"))
            }
            Message::Error { message } => Err(self.fail(message.escape_debug())),
            other => Err(self.unexpected("UnwrapDataKey", &other)),
        }
    }

    /// Sends one request and returns the reply; reconnects once if the connection broke
    /// (requests are idempotent). A vault's refusal is an error naming its reason.
    fn call(&self, request: &Message) -> Result<Message> {
        let mut guard = self.lock();
        let mut last = None;
        for _ in 0..2 {
            if guard.is_none() {
                *guard = Some(self.reopen()?);
            }
            let Some(stream) = guard.as_mut() else {
                continue;
            };
            stream.renew(TIMEOUT);
            let reply = write_message(stream, request).and_then(|_| read_message(stream));
            match reply {
                Ok(Message::Error { message }) => return Err(self.fail(message.escape_debug())),
                Ok(m) => return Ok(m),
                Err(e) => {
                    *guard = None;
                    // A vault that does not answer in time is not asked again at once: the
                    // caller should not wait twice.
                    let timed_out = matches!(
                        &e,
                        sealdb_vault_proto::ProtoError::Io(io)
                            if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
                    );
                    if timed_out {
                        return Err(self.fail(e));
                    }
                    last = Some(e);
                }
            }
        }
        Err(self.fail(last.map_or_else(|| "no connection".into(), |e| e.to_string())))
    }

    fn unexpected(&self, request: &str, got: &Message) -> Error {
        self.fail(format!("answered {request} with {}", got.name()))
    }

    fn bytes(&self, request: Message) -> Result<Vec<u8>> {
        let name = request.name();
        match self.call(&request)? {
            Message::Bytes { data } => Ok(data),
            other => Err(self.unexpected(name, &other)),
        }
    }

    fn verdict(&self, request: Message) -> Result<bool> {
        let name = request.name();
        match self.call(&request)? {
            Message::Verdict { ok } => Ok(ok),
            other => Err(self.unexpected(name, &other)),
        }
    }
}

impl KeyProvider for VaultKeyProvider {
    fn make_check_value(&self, aad: &[u8]) -> Result<Vec<u8>> {
        self.bytes(Message::MakeCheckValue { aad: aad.to_vec() })
    }

    fn verify_check_value(&self, aad: &[u8], kcv: &[u8]) -> Result<bool> {
        self.verdict(Message::VerifyCheckValue {
            aad: aad.to_vec(),
            kcv: kcv.to_vec(),
        })
    }

    fn new_data_key(&self, aad: &[u8]) -> Result<(SecretKey, Vec<u8>)> {
        match self.call(&Message::NewDataKey { aad: aad.to_vec() })? {
            Message::DataKey { key, wrapped } => Ok((key, wrapped)),
            other => Err(self.unexpected("NewDataKey", &other)),
        }
    }

    fn unwrap_data_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<Option<SecretKey>> {
        match self.call(&Message::UnwrapDataKey {
            aad: aad.to_vec(),
            wrapped: wrapped.to_vec(),
        })? {
            Message::Unwrapped { key } => Ok(key),
            other => Err(self.unexpected("UnwrapDataKey", &other)),
        }
    }

    fn rewrap_data_key(&self, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>> {
        let copy = SecretKey::from_slice(key.danger_export())?;
        self.bytes(Message::WrapDataKey {
            aad: aad.to_vec(),
            key: copy,
        })
    }

    fn authenticate(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.bytes(Message::Authenticate {
            data: data.to_vec(),
        })
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> Result<bool> {
        self.verdict(Message::VerifyTag {
            data: data.to_vec(),
            tag: tag.to_vec(),
        })
    }
}

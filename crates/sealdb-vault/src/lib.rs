//! The sealdb vault: a small process that holds the master key inside a TEE.
//!
//! Lifecycle: the vault starts **unprovisioned**, with a TLS key pair it made itself
//! ([`sealdb_crypto::tls::TlsIdentity`]). The owner connects over TLS 1.3, sends a fresh
//! nonce, and receives evidence from the vault's TEE ([`Tee`]) whose report_data binds the
//! TLS key, the nonce, the connection's exporter value and the owner's public key
//! ([`sealdb_vault_proto::binding`]). Only after verifying it does the owner send the master
//! key, signed for this connection, on the same connection; the vault is then
//! **provisioned** and answers with a key-check value so the owner knows the key arrived
//! intact. The master key lives only in this process's memory (inside a
//! [`sealdb_crypto::MasterKey`]) and is never written anywhere.
//!
//! Once provisioned, the vault serves the engine on a local Unix socket ([`LocalServer`]):
//! key-check values, new data keys, unwrapping and wrapping data keys, and authenticating
//! the key registry, with the same master-key code as the engine's `host` mode
//! ([`sealdb_crypto::MasterKey`]). The socket is owner-only (0600) and the vault serves only
//! peers of its own user id.
//!
//! The vault takes a master key only from the owner it was started for: the owner's Ed25519
//! public key is part of its configuration (measured, in a real TEE), is bound into every
//! evidence, and must have signed the master-key message for this connection.
//!
//! Evidence producers: simulated (feature `sim`), SGX under Gramine, TDX and SEV-SNP through
//! configfs-tsm. Not here yet: Nitro, master key rotation inside the vault, sealing, the
//! `vault-sealed` mode.
#![forbid(unsafe_code)]

mod local;
mod server;
mod tee;

use std::sync::Mutex;

use sealdb_crypto::{MasterKey, SecretKey};
use sealdb_vault_proto::Message;

pub use local::LocalServer;
pub use server::{serve, Server};
#[cfg(feature = "sim")]
pub use tee::Simulated;
pub use tee::{ConfigfsTsm, GramineSgx, Tee};

/// The TEE named `name`: `sim`, `gramine` (`dir`: Gramine's attestation directory,
/// normally `/dev/attestation`) or `tsm` (TDX or SEV-SNP through configfs-tsm; `dir`: the
/// report directory, normally `/sys/kernel/config/tsm/report`).
pub fn tee_by_name(name: &str, dir: Option<&str>) -> Result<Box<dyn Tee>, VaultError> {
    match name {
        "gramine" => Ok(Box::new(GramineSgx::new(dir.unwrap_or("/dev/attestation")))),
        "tsm" => Ok(Box::new(ConfigfsTsm::new(
            dir.unwrap_or("/sys/kernel/config/tsm/report"),
        )?)),
        #[cfg(feature = "sim")]
        "sim" => Ok(Box::new(Simulated::new()?)),
        #[cfg(not(feature = "sim"))]
        "sim" => Err(VaultError::Tee(
            "this build has no simulated TEE (cargo feature `sim`)".into(),
        )),
        other => Err(VaultError::Tee(format!(
            "unknown TEE {other:?} (sim, gramine, tsm)"
        ))),
    }
}

/// The owner's Ed25519 public key from 64 hex digits.
pub fn parse_owner(hex_key: &str) -> Result<[u8; 32], VaultError> {
    let t = hex_key.trim();
    let mut out = [0u8; 32];
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VaultError::Config(
            "the owner key must be 64 hex digits (an Ed25519 public key)".into(),
        ));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
            .map_err(|_| VaultError::Config("the owner key is not hex".into()))?;
    }
    Ok(out)
}

/// What went wrong in the vault. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The vault's configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The TEE could not produce evidence.
    #[error("TEE: {0}")]
    Tee(String),
    /// The master key is not signed by the owner the vault was started for.
    #[error("refused: the master key is not signed by this vault's owner")]
    NotOwner,
    /// The vault already holds another master key.
    #[error("already provisioned with another master key")]
    AlreadyProvisioned,
    /// A message out of order (e.g. a key before a challenge on that connection).
    #[error("protocol: {0}")]
    Protocol(String),
    /// TLS or crypto failure.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The wire.
    #[error(transparent)]
    Wire(#[from] sealdb_vault_proto::ProtoError),
}

/// The vault's state; only the provisioned state owns a key.
enum State {
    Unprovisioned,
    Provisioned(Box<Held>),
}

/// The master key, ready for use, and its key-check value (to recognise a retry with the
/// same key without keeping a second copy of it).
struct Held {
    master: MasterKey,
    check: Vec<u8>,
}

/// The key-holding state machine, shared by all connections.
pub struct Vault {
    state: Mutex<State>,
    tee: Box<dyn Tee>,
    owner: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("provisioned", &self.is_provisioned())
            .field("tee", &self.tee.format())
            .finish()
    }
}

impl Vault {
    /// An unprovisioned vault whose evidence comes from `tee`, that takes a master key only
    /// from `owner` (an Ed25519 public key). In a TEE the owner key must be part of what is
    /// measured (Gramine: `loader.argv`), so the evidence vouches for it.
    pub fn new(tee: Box<dyn Tee>, owner: [u8; 32]) -> Self {
        Vault {
            state: Mutex::new(State::Unprovisioned),
            tee,
            owner,
        }
    }

    /// The owner's public key.
    pub fn owner(&self) -> &[u8; 32] {
        &self.owner
    }

    /// The TEE.
    pub fn tee(&self) -> &dyn Tee {
        self.tee.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed (each change
        // is one assignment), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds a master key.
    pub fn is_provisioned(&self) -> bool {
        matches!(*self.lock(), State::Provisioned(_))
    }

    /// Takes the master key, if `signature` is the owner's over `signed` (the connection's
    /// [`sealdb_vault_proto::owner_signed_message`]), and returns a key-check value.
    /// Sending the same key again is accepted (a retry); another key is refused.
    pub fn provision(
        &self,
        key: SecretKey,
        signed: &[u8],
        signature: &[u8; 64],
    ) -> Result<Vec<u8>, VaultError> {
        if sealdb_crypto::verify_ed25519(&self.owner, signed, signature).is_err() {
            return Err(VaultError::NotOwner);
        }
        let master = MasterKey::new(&key);
        drop(key);
        let crypto = |e: sealdb_crypto::CryptoError| VaultError::Crypto(e.to_string());
        let mut state = self.lock();
        if let State::Provisioned(held) = &*state {
            // A retry with the same key keeps what is held (no second copy is made).
            return if master.verify_check_value(sealdb_vault_proto::KEY_CHECK_AAD, &held.check) {
                held.master
                    .check_value(sealdb_vault_proto::KEY_CHECK_AAD)
                    .map_err(crypto)
            } else {
                Err(VaultError::AlreadyProvisioned)
            };
        }
        let check = master
            .check_value(sealdb_vault_proto::KEY_CHECK_AAD)
            .map_err(crypto)?;
        let kcv = master
            .check_value(sealdb_vault_proto::KEY_CHECK_AAD)
            .map_err(crypto)?;
        *state = State::Provisioned(Box::new(Held { master, check }));
        Ok(kcv)
    }

    /// Answers one engine request (from the local socket). Anything but an engine request,
    /// or any request before provisioning, is answered with [`Message::Error`].
    pub fn engine_request(&self, request: Message) -> Message {
        let state = self.lock();
        let State::Provisioned(held) = &*state else {
            return Message::Error {
                message: "the vault is not provisioned: the owner must run `sealdb provision`"
                    .into(),
            };
        };
        let master = &held.master;
        let crypto = |e: sealdb_crypto::CryptoError| Message::Error {
            message: format!("crypto: {e}"),
        };
        match request {
            Message::MakeCheckValue { aad } => match master.check_value(&aad) {
                Ok(data) => Message::Bytes { data },
                Err(e) => crypto(e),
            },
            Message::VerifyCheckValue { aad, kcv } => Message::Verdict {
                ok: master.verify_check_value(&aad, &kcv),
            },
            Message::NewDataKey { aad } => match master.new_data_key(&aad) {
                Ok((key, wrapped)) => Message::DataKey { key, wrapped },
                Err(e) => crypto(e),
            },
            Message::UnwrapDataKey { aad, wrapped } => Message::Unwrapped {
                key: master.unwrap(&aad, &wrapped),
            },
            Message::WrapDataKey { aad, key } => match master.wrap(&aad, &key) {
                Ok(data) => Message::Bytes { data },
                Err(e) => crypto(e),
            },
            Message::Authenticate { data } => match master.authenticate(&data) {
                Ok(data) => Message::Bytes { data },
                Err(e) => crypto(e),
            },
            Message::VerifyTag { data, tag } => Message::Verdict {
                ok: master.verify_tag(&data, &tag),
            },
            other => Message::Error {
                message: format!("unexpected {} on the engine socket", other.name()),
            },
        }
    }
}

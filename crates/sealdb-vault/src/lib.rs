//! The sealdb vault: a small process that holds the master key inside a TEE.
//!
//! Lifecycle: the vault starts **unprovisioned**, with a TLS key pair it made itself
//! ([`sealdb_crypto::tls::TlsIdentity`]). The owner connects over TLS 1.3, sends a fresh
//! nonce, and receives evidence from the vault's TEE ([`Tee`]) whose report_data binds the
//! TLS key, the nonce and the connection's exporter value
//! ([`sealdb_vault_proto::binding`]). Only after verifying it does the owner send the master
//! key, on the same connection; the vault is then **provisioned** and answers with a
//! key-check value so the owner knows the key arrived intact. The master key lives only in
//! this process's memory (a [`sealdb_crypto::SecretKey`], zeroized on drop) and is never
//! written anywhere.
//!
//! Not here yet: the engine's local socket (unwrap data keys, re-wrap the registry), master
//! key rotation, sealing, and evidence producers for TDX/SEV-SNP (configfs-tsm) and Nitro.
#![forbid(unsafe_code)]

mod server;
mod tee;

use std::sync::Mutex;

use sealdb_crypto::{AeadKey, SecretKey};

pub use server::{serve, Server};
#[cfg(feature = "sim")]
pub use tee::Simulated;
pub use tee::{GramineSgx, Tee};

/// The TEE named `name` (`sim`, `gramine`); `gramine_dir` is Gramine's attestation
/// directory (normally `/dev/attestation`).
pub fn tee_by_name(name: &str, gramine_dir: &str) -> Result<Box<dyn Tee>, VaultError> {
    match name {
        "gramine" => Ok(Box::new(GramineSgx::new(gramine_dir))),
        #[cfg(feature = "sim")]
        "sim" => Ok(Box::new(Simulated::new()?)),
        #[cfg(not(feature = "sim"))]
        "sim" => Err(VaultError::Tee(
            "this build has no simulated TEE (cargo feature `sim`)".into(),
        )),
        other => Err(VaultError::Tee(format!(
            "unknown TEE {other:?} (sim, gramine)"
        ))),
    }
}

/// What went wrong in the vault. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The TEE could not produce evidence.
    #[error("TEE: {0}")]
    Tee(String),
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
    Provisioned { master: SecretKey },
}

/// The key-holding state machine, shared by all connections.
pub struct Vault {
    state: Mutex<State>,
    tee: Box<dyn Tee>,
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
    /// An unprovisioned vault whose evidence comes from `tee`.
    pub fn new(tee: Box<dyn Tee>) -> Self {
        Vault {
            state: Mutex::new(State::Unprovisioned),
            tee,
        }
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
        matches!(*self.lock(), State::Provisioned { .. })
    }

    /// Takes the master key and returns its key-check value. Sending the same key again is
    /// accepted (a retry); another key is refused.
    pub fn provision(&self, key: SecretKey) -> Result<Vec<u8>, VaultError> {
        let mut state = self.lock();
        if let State::Provisioned { master } = &*state {
            if !master.ct_eq(&key) {
                return Err(VaultError::AlreadyProvisioned);
            }
        }
        let kcv = AeadKey::new(&key)
            .check_value(sealdb_vault_proto::KEY_CHECK_AAD)
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        *state = State::Provisioned { master: key };
        Ok(kcv)
    }
}

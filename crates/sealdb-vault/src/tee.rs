//! Evidence producers: the TEE the vault runs in signs the report_data it is given.

use std::path::PathBuf;

use sealdb_attest::Format;

use crate::VaultError;

/// A source of attestation evidence.
pub trait Tee: Send + Sync {
    /// The evidence format this TEE produces.
    fn format(&self) -> Format;
    /// Evidence that binds `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, VaultError>;
    /// Whether this is the insecure simulation.
    fn is_simulated(&self) -> bool {
        false
    }
}

/// Intel SGX under Gramine: write the report data to `/dev/attestation/user_report_data`,
/// read a DCAP quote from `/dev/attestation/quote` (Gramine's attestation pseudo-files).
#[derive(Debug)]
pub struct GramineSgx {
    root: PathBuf,
}

impl GramineSgx {
    /// Gramine's attestation files under `root` (normally `/dev/attestation`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        GramineSgx { root: root.into() }
    }
}

impl Tee for GramineSgx {
    fn format(&self) -> Format {
        Format::Sgx
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, VaultError> {
        let io = |what: &str, path: &std::path::Path, e: std::io::Error| {
            VaultError::Tee(format!("{what} {}: {e}", path.display()))
        };
        let rd = self.root.join("user_report_data");
        std::fs::write(&rd, report_data).map_err(|e| io("writing", &rd, e))?;
        let q = self.root.join("quote");
        let quote = std::fs::read(&q).map_err(|e| io("reading", &q, e))?;
        if quote.is_empty() {
            return Err(VaultError::Tee(format!("{} is empty", q.display())));
        }
        Ok(quote)
    }
}

/// The simulated TEE: `sim-v1` evidence signed by a platform key made at start, measuring
/// the running binary. It proves nothing; verifiers accept it only when told to.
#[cfg(feature = "sim")]
#[derive(Debug)]
pub struct Simulated {
    platform: sealdb_attest::sim::SimPlatform,
    measurement: [u8; 48],
}

#[cfg(feature = "sim")]
impl Simulated {
    /// A fresh platform key; the measurement is the SHA-384 of this process's executable.
    pub fn new() -> Result<Self, VaultError> {
        let exe = std::env::current_exe()
            .map_err(|e| VaultError::Tee(format!("finding the running binary: {e}")))?;
        let bytes = std::fs::read(&exe)
            .map_err(|e| VaultError::Tee(format!("reading {}: {e}", exe.display())))?;
        Ok(Simulated {
            platform: sealdb_attest::sim::SimPlatform::generate()
                .map_err(|e| VaultError::Tee(e.to_string()))?,
            measurement: sealdb_attest::sim::measure(&bytes),
        })
    }

    /// The measurement it reports (hex in the claims as `sim_measurement`).
    pub fn measurement(&self) -> [u8; 48] {
        self.measurement
    }

    /// The simulated platform's public key.
    pub fn platform_key(&self) -> [u8; 32] {
        self.platform.public_key()
    }
}

#[cfg(feature = "sim")]
impl Tee for Simulated {
    fn format(&self) -> Format {
        Format::Sim
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, VaultError> {
        Ok(self.platform.evidence(&self.measurement, report_data))
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

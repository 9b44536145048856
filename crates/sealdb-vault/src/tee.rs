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
    /// What identifies a simulated platform (its key), for the operator to pin.
    fn identity(&self) -> Option<String> {
        None
    }
}

/// Intel SGX under Gramine: write the report data to `/dev/attestation/user_report_data`,
/// read a DCAP quote from `/dev/attestation/quote` (Gramine's attestation pseudo-files).
#[derive(Debug)]
pub struct GramineSgx {
    root: PathBuf,
    /// The pseudo-files are per process: one request at a time, or two sessions' report
    /// data could cross.
    busy: std::sync::Mutex<()>,
}

impl GramineSgx {
    /// Gramine's attestation files under `root` (normally `/dev/attestation`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        GramineSgx {
            root: root.into(),
            busy: std::sync::Mutex::new(()),
        }
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
        let _one_at_a_time = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// A TDX or SEV-SNP confidential VM through Linux configfs-tsm
/// (`/sys/kernel/config/tsm/report`): one report directory per request; write the report
/// data to `inblob`, read the evidence from `outblob`, check with `generation` that nobody
/// else wrote in between, remove the directory.
#[derive(Debug)]
pub struct ConfigfsTsm {
    root: PathBuf,
    format: Format,
    next: std::sync::atomic::AtomicU64,
}

impl ConfigfsTsm {
    /// The TSM report directory `root` (normally `/sys/kernel/config/tsm/report`); the
    /// provider (`tdx_guest` or `sev_guest`) decides the format. Probes it once.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, VaultError> {
        let root = root.into();
        let probe = ConfigfsTsm {
            root,
            format: Format::Tdx,
            next: std::sync::atomic::AtomicU64::new(0),
        };
        let dir = probe.entry()?;
        let provider = std::fs::read_to_string(dir.join("provider"));
        let _ = std::fs::remove_dir(&dir);
        let provider = provider.map_err(|e| {
            VaultError::Tee(format!("reading {}: {e}", dir.join("provider").display()))
        })?;
        let format = match provider.trim() {
            "tdx_guest" => Format::Tdx,
            "sev_guest" => Format::Snp,
            other => {
                return Err(VaultError::Tee(format!(
                    "configfs-tsm provider {other:?} is not tdx_guest or sev_guest"
                )))
            }
        };
        Ok(ConfigfsTsm { format, ..probe })
    }

    /// A report directory of this process (one left behind by an earlier process with the
    /// same id is reused: `generation` guards against concurrent writers).
    fn entry(&self) -> Result<PathBuf, VaultError> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .root
            .join(format!("sealdb-vault-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(dir),
            Err(e) => Err(VaultError::Tee(format!("creating {}: {e}", dir.display()))),
        }
    }
}

impl Tee for ConfigfsTsm {
    fn format(&self) -> Format {
        self.format
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, VaultError> {
        let dir = self.entry()?;
        let result = (|| {
            let path = |name: &str| dir.join(name);
            let io = |p: PathBuf| {
                move |e: std::io::Error| VaultError::Tee(format!("{}: {e}", p.display()))
            };
            let generation = || -> Result<String, VaultError> {
                std::fs::read_to_string(path("generation"))
                    .map(|g| g.trim().to_string())
                    .map_err(io(path("generation")))
            };
            // The kernel counts writes in `generation`: exactly one (ours) between reading
            // it before and after, or another writer used the directory meanwhile.
            let before: u64 = generation()?.parse().map_err(|_| {
                VaultError::Tee(format!("{} is not a number", path("generation").display()))
            })?;
            std::fs::write(path("inblob"), report_data).map_err(io(path("inblob")))?;
            let out = std::fs::read(path("outblob")).map_err(io(path("outblob")))?;
            if generation()? != (before + 1).to_string() {
                return Err(VaultError::Tee(format!(
                    "{} was written by another process during the request",
                    dir.display()
                )));
            }
            if out.is_empty() {
                return Err(VaultError::Tee(format!(
                    "{} is empty",
                    path("outblob").display()
                )));
            }
            Ok(out)
        })();
        let _ = std::fs::remove_dir(&dir);
        result
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

    fn identity(&self) -> Option<String> {
        Some(format!(
            "sim platform key {}",
            self.platform_key()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }
}

//! `sim-v1`: evidence of sealdb's simulated TEE, for development on machines without a TEE.
//!
//! It speaks the same protocol as the real formats: 64 bytes of report_data bound by a
//! signature, and a measurement a policy can pin (the SHA-384 of the running vault binary,
//! so a changed binary is refused as on real hardware). It is signed by a *simulated platform
//! key* that anyone can make, so it proves nothing about where the code runs: it is always
//! `debug = true` and [`crate::verify`] refuses it unless the policy sets
//! `allow_insecure_simulation`.
//!
//! Layout (220 bytes, integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SEALSIM1` |
//! | 8 | 2 | version, 1 |
//! | 10 | 2 | flags: bit 0 debug (always set), other bits zero |
//! | 12 | 32 | platform public key (Ed25519) |
//! | 44 | 48 | measurement (SHA-384 of the vault binary) |
//! | 92 | 64 | report_data |
//! | 156 | 64 | Ed25519 signature over [`SIGNATURE_CONTEXT`] ‖ bytes 0..156 |

use std::collections::BTreeMap;

use crate::{Claims, Endorsements, Evidence, Format, Rejection};

/// Magic bytes that start `sim-v1` evidence.
pub const MAGIC: &[u8; 8] = b"SEALSIM1";
/// Length of `sim-v1` evidence.
pub const EVIDENCE_LEN: usize = 220;
/// Domain separation for the signature: no other signed sealdb message starts like this.
pub const SIGNATURE_CONTEXT: &[u8] = b"sealdb sim-v1 evidence\0";
const VERSION: u16 = 1;
const FLAG_DEBUG: u16 = 1;
const SIGNED_LEN: usize = 156;

/// The fields of `sim-v1` evidence, parsed but not yet verified.
#[derive(Debug)]
struct Parsed<'a> {
    platform_key: &'a [u8],
    measurement: &'a [u8],
    report_data: &'a [u8],
    signature: &'a [u8],
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::Malformed {
        what: "sim-v1 evidence",
        detail: detail.into(),
    }
}

fn parse(b: &[u8]) -> Result<Parsed<'_>, Rejection> {
    if b.len() != EVIDENCE_LEN {
        return Err(malformed(format!(
            "length {} (sim-v1 evidence is {EVIDENCE_LEN} bytes)",
            b.len()
        )));
    }
    if &b[..8] != MAGIC {
        return Err(malformed("bad magic at offset 0 (expected SEALSIM1)"));
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(malformed(format!(
            "version {version} at offset 8 (expected 1)"
        )));
    }
    let flags = u16::from_le_bytes([b[10], b[11]]);
    if flags != FLAG_DEBUG {
        return Err(malformed(format!(
            "flags {flags:#06x} at offset 10 (sim-v1 is always debug, 0x0001)"
        )));
    }
    Ok(Parsed {
        platform_key: &b[12..44],
        measurement: &b[44..92],
        report_data: &b[92..156],
        signature: &b[156..220],
    })
}

fn signed_message(evidence: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_CONTEXT.len() + SIGNED_LEN);
    msg.extend_from_slice(SIGNATURE_CONTEXT);
    msg.extend_from_slice(&evidence[..SIGNED_LEN]);
    msg
}

pub(crate) fn verify(
    evidence: &Evidence<'_>,
    endorsements: &Endorsements,
    now: u64,
) -> Result<Claims, Rejection> {
    let p = parse(evidence.bytes)?;
    if let Some(pinned) = &endorsements.sim_platform_key {
        if !sealdb_crypto::ct_eq(pinned, p.platform_key) {
            return Err(Rejection::NotAuthentic(
                "the evidence is signed by another simulated platform key".into(),
            ));
        }
    }
    sealdb_crypto::verify_ed25519(p.platform_key, &signed_message(evidence.bytes), p.signature)
        .map_err(|_| Rejection::NotAuthentic("sim-v1 signature".into()))?;
    Ok(Claims {
        format: Format::Sim,
        measurements: BTreeMap::from([
            // Named apart from SEV-SNP's `measurement`, so a pinned SNP launch digest is
            // never satisfied by simulated evidence.
            ("sim_measurement".to_string(), hex::encode(p.measurement)),
            ("sim_platform_key".to_string(), hex::encode(p.platform_key)),
        ]),
        versions: BTreeMap::from([("version".to_string(), u64::from(VERSION))]),
        tcb_status: "NotApplicable".into(),
        advisories: Vec::new(),
        debug: true,
        report_data: hex::encode(p.report_data),
        collateral: BTreeMap::new(),
        collateral_issued_at: None,
        evidence_created_at: None,
        verified_at: now,
    })
}

/// The simulated TEE's side: makes `sim-v1` evidence. Only with the `sim-producer` feature,
/// which the vault's release builds leave off.
#[cfg(feature = "sim-producer")]
#[derive(Debug)]
pub struct SimPlatform {
    key: sealdb_crypto::SigningKey,
}

#[cfg(feature = "sim-producer")]
impl SimPlatform {
    /// A platform with a fresh random key.
    pub fn generate() -> Result<Self, sealdb_crypto::CryptoError> {
        Ok(SimPlatform {
            key: sealdb_crypto::SigningKey::generate()?,
        })
    }

    /// A platform whose key is the given 32-byte seed (for a key kept in a file).
    pub fn from_seed(seed: &[u8]) -> Result<Self, sealdb_crypto::CryptoError> {
        Ok(SimPlatform {
            key: sealdb_crypto::SigningKey::from_seed(seed)?,
        })
    }

    /// The platform's public key, which a verifier may pin
    /// ([`Endorsements::with_sim_platform_key`]).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// Evidence that binds `report_data` to `measurement`.
    pub fn evidence(&self, measurement: &[u8; 48], report_data: &[u8; 64]) -> Vec<u8> {
        let mut b = Vec::with_capacity(EVIDENCE_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&FLAG_DEBUG.to_le_bytes());
        b.extend_from_slice(&self.key.public_key());
        b.extend_from_slice(measurement);
        b.extend_from_slice(report_data);
        let sig = self.key.sign(&signed_message(&b));
        b.extend_from_slice(&sig);
        b
    }
}

/// The measurement `sim-v1` reports for a binary: the SHA-384 of its bytes.
pub fn measure(binary: &[u8]) -> [u8; 48] {
    sealdb_crypto::sha384(binary)
}

//! Attestation evidence from TEEs, verified on the owner's machine with no attestation service.
//!
//! One entry point, [`verify`]: a pure function of (evidence, endorsements, policy, expected
//! report_data, now) that returns typed [`Claims`] or a typed [`Rejection`]. No network and no
//! clock inside: collateral is passed in ([`Endorsements`]) and time is a parameter, so real
//! samples with expired collateral verify at their reference time and fail today.
//!
//! Formats: Intel DCAP quotes (SGX v3, TDX v4/v5) through the `dcap-qvl` crate; AMD SEV-SNP
//! reports through the `sev` crate plus our own date, TCB, debug and encoding checks; AWS
//! Nitro attestation documents (COSE_Sign1 ES384, chain to the pinned Nitro root G1,
//! signatures checked through `sealdb-crypto`); `sim-v1`, sealdb's simulated TEE ([`sim`]),
//! accepted only by a policy that sets `allow_insecure_simulation`.
//!
//! ```no_run
//! use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};
//! let quote = std::fs::read("quote.dat").unwrap();
//! let collateral = std::fs::read_to_string("collateral.json").unwrap();
//! let endorsements = Endorsements::dcap_collateral_json(&collateral).unwrap();
//! let claims = verify(
//!     &Evidence { format: Format::Sgx, bytes: &quote },
//!     &endorsements,
//!     &Policy::default(),
//!     None,
//!     1_750_377_600,
//! );
//! ```
#![forbid(unsafe_code)]

mod dcap;
mod nitro;
mod policy;
pub mod sim;
mod snp;

pub use policy::Policy;

/// Evidence formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// Intel SGX DCAP quote (v3).
    Sgx,
    /// Intel TDX DCAP quote (v4, v5).
    Tdx,
    /// AMD SEV-SNP attestation report.
    Snp,
    /// AWS Nitro attestation document.
    Nitro,
    /// sealdb's simulated TEE (`sim-v1`).
    Sim,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgx" => Ok(Format::Sgx),
            "tdx" => Ok(Format::Tdx),
            "snp" => Ok(Format::Snp),
            "nitro" => Ok(Format::Nitro),
            "sim" => Ok(Format::Sim),
            other => Err(format!(
                "unknown format {other:?} (sgx, tdx, snp, nitro, sim)"
            )),
        }
    }
}

/// Evidence bytes and their claimed format.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The format the bytes are in.
    pub format: Format,
    /// The raw evidence.
    pub bytes: &'a [u8],
}

/// What vouches for the evidence besides itself: collateral, certificates.
#[derive(Debug, Clone, Default)]
pub struct Endorsements {
    dcap: Option<dcap_qvl::QuoteCollateralV3>,
    nitro_root: Option<Vec<u8>>,
    snp_vcek: Option<Vec<u8>>,
    sim_platform_key: Option<[u8; 32]>,
}

impl Endorsements {
    /// Intel collateral as JSON (the format of Intel PCS / PCCS responses gathered by
    /// `dcap-qvl`, as in `../shared/testvectors/dcap/*_collateral.json`).
    pub fn dcap_collateral_json(json: &str) -> Result<Self, Rejection> {
        let c = serde_json::from_str(json).map_err(|e| Rejection::Malformed {
            what: "DCAP collateral",
            detail: e.to_string(),
        })?;
        Ok(Endorsements {
            dcap: Some(c),
            ..Endorsements::default()
        })
    }

    /// The VCEK certificate (DER) that signed an SEV-SNP report.
    pub fn with_snp_vcek(mut self, der: Vec<u8>) -> Self {
        self.snp_vcek = Some(der);
        self
    }

    /// The only simulated platform key (Ed25519) whose `sim-v1` evidence is accepted;
    /// without it any key's is (simulation proves nothing either way).
    pub fn with_sim_platform_key(mut self, key: [u8; 32]) -> Self {
        self.sim_platform_key = Some(key);
        self
    }

    /// A Nitro root certificate (DER) to trust instead of the pinned AWS Nitro root G1.
    pub fn with_nitro_root(mut self, der: Vec<u8>) -> Self {
        self.nitro_root = Some(der);
        self
    }
}

/// What verified evidence says, as JSON-friendly values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Claims {
    /// The evidence format.
    pub format: Format,
    /// Measurements by name (hex), e.g. `mr_enclave`, `mr_signer`, `mr_td`, `rtmr0`.
    pub measurements: std::collections::BTreeMap<String, String>,
    /// Security version numbers and product ids by name.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Platform TCB status as the vendor's collateral rates it (e.g. `UpToDate`).
    pub tcb_status: String,
    /// Security advisories that apply (e.g. `INTEL-SA-00615`).
    pub advisories: Vec<String>,
    /// The TEE runs in debug mode (its memory is readable by the host).
    pub debug: bool,
    /// The 64 bytes the TEE bound into the evidence (hex).
    pub report_data: String,
    /// What the endorsements were: SHA-256 digests (hex) of each collateral item and, for
    /// DCAP, their dates (`tcb_info_issue_date`, `pck_crl_this_update`, … as Unix seconds
    /// in decimal).
    pub collateral: std::collections::BTreeMap<String, String>,
    /// The oldest issue date among the dated collateral items (DCAP TCB info and QE
    /// identity `issueDate`, PCK CRL `thisUpdate`), Unix seconds; `None` for formats without
    /// dated collateral.
    pub collateral_issued_at: Option<u64>,
    /// When the TEE made the evidence, Unix seconds, for formats that say: Nitro's
    /// `timestamp` (signed, in milliseconds, rounded down here); `None` for the others.
    pub evidence_created_at: Option<u64>,
    /// The time the evidence was judged at (Unix seconds).
    pub verified_at: u64,
}

/// Why evidence was refused, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The bytes are not evidence of the claimed format.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What could not be parsed.
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// Endorsements the format needs were not given (e.g. DCAP collateral).
    #[error("missing endorsement: {0}")]
    MissingEndorsement(&'static str),
    /// Signatures, certificate chains, CRLs or collateral validity failed at `now`
    /// (including expired collateral).
    #[error("evidence not authentic at the given time: {0}")]
    NotAuthentic(String),
    /// The TEE is in debug mode and the policy does not allow debug.
    #[error("the TEE runs in debug mode, which the policy refuses")]
    Debug,
    /// The evidence binds other report_data than expected (a replay or another session).
    #[error("report_data does not match the expected value")]
    ReportDataMismatch,
    /// The evidence is authentic but the policy refuses it.
    #[error("policy refuses the evidence: {0}")]
    Policy(String),
    /// The format is not supported by this build.
    #[error("format {0:?} is not supported yet")]
    Unsupported(Format),
}

/// Verifies `evidence` against `endorsements` and `policy` at time `now` (Unix seconds).
/// With `expected_report_data`, the evidence must bind exactly those bytes: a shorter value
/// must match the start of the bound data and the rest must be zero.
///
/// [`Rejection::Debug`] is decided before authenticity: it says the evidence claims debug
/// mode, not that the evidence is genuine.
pub fn verify(
    evidence: &Evidence<'_>,
    endorsements: &Endorsements,
    policy: &Policy,
    expected_report_data: Option<&[u8]>,
    now: u64,
) -> Result<Claims, Rejection> {
    if !policy.allows_format(evidence.format) {
        let why = if evidence.format == Format::Sim && !policy.allow_insecure_simulation {
            " (simulated evidence needs allow_insecure_simulation = true)"
        } else {
            ""
        };
        return Err(Rejection::Policy(format!(
            "format {:?} is not allowed{why}",
            evidence.format
        )));
    }
    let claims = match evidence.format {
        Format::Sgx | Format::Tdx => dcap::verify(evidence, endorsements, policy, now)?,
        Format::Nitro => nitro::verify(evidence, endorsements, policy, now)?,
        Format::Snp => snp::verify(evidence, endorsements, policy, now)?,
        Format::Sim => sim::verify(evidence, endorsements, now)?,
    };
    if let Some(expected) = expected_report_data {
        check_report_data(&claims.report_data, expected)?;
    }
    policy.evaluate(&claims)?;
    Ok(claims)
}

/// The DER inside a PEM certificate (the first `-----BEGIN …-----` block); `None` if it is
/// not valid base64.
pub fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(b64.trim())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// Unix seconds of an RFC 3339 UTC time as Intel writes them (`2025-06-19T08:57:43Z`,
/// fractional seconds allowed); `None` for anything else.
pub fn utc_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s.get(19..s.len() - 1)?;
    let frac_ok = frac.is_empty()
        || frac.len() > 1 && frac.starts_with('.') && frac[1..].bytes().all(|c| c.is_ascii_digit());
    if !frac_ok || y < 1970 || !(1..=12).contains(&mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = month_days.get(usize::try_from(mo).ok()? - 1)?;
    if d < 1 || d > *max_day {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let (y, mo) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3_600 + mi * 60 + sec)
}

fn check_report_data(actual_hex: &str, expected: &[u8]) -> Result<(), Rejection> {
    let actual = hex::decode(actual_hex).map_err(|_| Rejection::ReportDataMismatch)?;
    if expected.len() > actual.len() {
        return Err(Rejection::ReportDataMismatch);
    }
    let (head, tail) = actual.split_at(expected.len());
    if head == expected && tail.iter().all(|b| *b == 0) {
        Ok(())
    } else {
        Err(Rejection::ReportDataMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::utc_seconds as parse_utc;

    #[test]
    fn utc_times_parse_like_python_calendar_timegm() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2025-06-19T08:57:43Z"), Some(1_750_323_463));
        assert_eq!(parse_utc("2000-02-29T12:00:00.25Z"), Some(951_825_600));
        assert_eq!(parse_utc("2100-03-01T00:00:00Z"), Some(4_107_542_400));
        assert_eq!(
            parse_utc("1970-01-01T00:00:00.123456789012345678901234Z"),
            Some(0)
        );
        for bad in [
            "",
            "2025-06-19 08:57:43Z",
            "2025-06-19T08:57:43",
            "2025-13-19T08:57:43Z",
            "2025-06-19T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2025-06-19T08:57:43.Z",
            "2025-06-19T08:57:43+01:00",
            "+025-06-19T08:57:43Z",
            "2025-06-19T08:57:43.x1Z",
            "2025-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-06-00T00:00:00Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}

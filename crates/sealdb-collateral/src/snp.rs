//! AMD SEV-SNP VCEK certificates from AMD KDS.
//!
//! `GET {kds}/vcek/v1/{Milan,Genoa,Turin}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
//! where `hwid` is the report's CHIP_ID in hex (its first 8 bytes on Turin, which also takes
//! `fmcSPL`) and the SPLs are the report's REPORTED_TCB, the TCB the verifier requires the
//! VCEK to be issued for. KDS answers with the certificate in DER.

use der::Decode;
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{FetchError, Run};

/// AMD EPYC generations with SEV-SNP, as KDS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnpProduct {
    /// 3rd generation EPYC.
    Milan,
    /// 4th generation EPYC (also Bergamo and Siena).
    Genoa,
    /// 5th generation EPYC.
    Turin,
}

impl SnpProduct {
    fn kds_name(self) -> &'static str {
        match self {
            SnpProduct::Milan => "Milan",
            SnpProduct::Genoa => "Genoa",
            SnpProduct::Turin => "Turin",
        }
    }
}

impl std::str::FromStr for SnpProduct {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "milan" => Ok(SnpProduct::Milan),
            "genoa" => Ok(SnpProduct::Genoa),
            "turin" => Ok(SnpProduct::Turin),
            other => Err(format!(
                "unknown SEV-SNP product {other:?} (milan, genoa, turin)"
            )),
        }
    }
}

/// The product a report names (report version 3 and later carry the CPUID family and model).
fn product_of(report: &AttestationReport) -> Option<SnpProduct> {
    let (family, model) = (report.cpuid_fam_id?, report.cpuid_mod_id?);
    match sev::Generation::identify_cpu(family, model).ok()? {
        sev::Generation::Milan => Some(SnpProduct::Milan),
        sev::Generation::Genoa => Some(SnpProduct::Genoa),
        sev::Generation::Turin => Some(SnpProduct::Turin),
        _ => None,
    }
}

/// The KDS URL of the VCEK for `report`.
pub(crate) fn vcek_url(
    kds: &str,
    report: &AttestationReport,
    product: Option<SnpProduct>,
) -> Result<String, FetchError> {
    // A report with an FMC TCB value comes from a Turin (or later) processor.
    let named = product_of(report).or(report.reported_tcb.fmc.map(|_| SnpProduct::Turin));
    let product = match (product, named) {
        (Some(given), Some(named)) if given != named => {
            return Err(FetchError::Evidence(format!(
                "the report names a {named:?} processor, not {given:?}"
            )))
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            return Err(FetchError::Evidence(format!(
                "SEV-SNP report version {} does not name its processor: give the product \
                 (milan, genoa, turin)",
                report.version
            )))
        }
    };
    if report.chip_id.iter().all(|b| *b == 0) {
        return Err(FetchError::Evidence(
            "the report's CHIP_ID is masked (MASK_CHIP_ID): fetch the VCEK on the host \
             (/dev/sev-guest extended report) and pass it as a file"
                .into(),
        ));
    }
    let t = &report.reported_tcb;
    let (hwid, fmc) = match product {
        SnpProduct::Turin => {
            let fmc = t.fmc.ok_or_else(|| {
                FetchError::Evidence("a Turin report without an FMC TCB value".into())
            })?;
            (
                hex::encode(&report.chip_id[..8]),
                format!("fmcSPL={fmc:02}&"),
            )
        }
        _ => (hex::encode(report.chip_id), String::new()),
    };
    Ok(format!(
        "{kds}/vcek/v1/{}/{hwid}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
        product.kds_name(),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    ))
}

pub(crate) fn vcek(
    run: &mut Run<'_>,
    report: &[u8],
    product: Option<SnpProduct>,
) -> Result<Vec<u8>, FetchError> {
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| FetchError::Evidence(format!("not an SEV-SNP report: {e}")))?;
    let url = vcek_url(&run.fetcher().kds_url, &parsed, product)?;
    // A VCEK is the same for the same chip and TCB: keep it until it expires.
    let resp = run.get(&url, &[], |r| not_after(&der_of(&r.body)), true)?;
    let der = der_of(&resp.body);
    x509_cert::Certificate::from_der(&der).map_err(|e| FetchError::Response {
        url: url.clone(),
        detail: format!("not an X.509 certificate: {e}"),
    })?;
    // Cached only if it verifies the report now: a wrong VCEK must not stick for years.
    let policy = sealdb_attest::Policy {
        allow_debug: true,
        ..sealdb_attest::Policy::default()
    };
    let verdict = sealdb_attest::verify(
        &sealdb_attest::Evidence {
            format: sealdb_attest::Format::Snp,
            bytes: report,
        },
        &sealdb_attest::Endorsements::default().with_snp_vcek(der.clone()),
        &policy,
        None,
        run.now(),
    )
    .map(|_| ())
    .map_err(|e| format!("the VCEK from {url} does not verify the report now: {e}"));
    run.commit(verdict);
    Ok(der)
}

/// KDS sends DER; accept PEM from mirrors too.
fn der_of(body: &[u8]) -> Vec<u8> {
    if body.starts_with(b"-----BEGIN") {
        sealdb_attest::pem_to_der(body).unwrap_or_else(|| body.to_vec())
    } else {
        body.to_vec()
    }
}

fn not_after(der_bytes: &[u8]) -> Option<u64> {
    let c = x509_cert::Certificate::from_der(der_bytes).ok()?;
    Some(crate::x509_seconds(&c.tbs_certificate.validity.not_after))
}

/// Every decoder of a KDS response body, for the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_response(body: &[u8]) {
    let der_bytes = der_of(body);
    let _ = not_after(&der_bytes);
    let _ = x509_cert::Certificate::from_der(&der_bytes);
}

//! AMD SEV-SNP attestation reports, verified with the `sev` crate plus our own checks.
//!
//! `sev` checks that the ARK is self-signed, ARK → ASK → VCEK, and the report's signature
//! with the VCEK; the AMD roots are its built-in Milan, Genoa and Turin certificates. `sev`
//! does not check certificate dates or what the VCEK was issued for, so this module adds:
//! every certificate valid at `now`; the report's reported TCB equal to the TCB in the VCEK's
//! AMD extensions; the guest policy's debug bit refused unless the policy allows debug; and
//! the report re-encodes to exactly the bytes given (the signature check runs on `sev`'s
//! re-encoding, which would otherwise ignore bytes it does not parse), with the zero padding
//! of the signature's R and S (read by nothing else) required to be zero.

use std::collections::BTreeMap;

use der::Decode;
use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{Claims, Endorsements, Evidence, Format, Policy, Rejection};

/// AMD VCEK extensions (X.509 OIDs) holding the TCB the key was issued for.
const TCB_OIDS: [(&str, &str); 5] = [
    ("1.3.6.1.4.1.3704.1.3.1", "bootloader"),
    ("1.3.6.1.4.1.3704.1.3.2", "tee"),
    ("1.3.6.1.4.1.3704.1.3.3", "snp"),
    ("1.3.6.1.4.1.3704.1.3.8", "microcode"),
    // Turin and later: the FMC's SPL.
    ("1.3.6.1.4.1.3704.1.3.9", "fmc"),
];

fn malformed(what: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Validity window and AMD TCB extensions of a DER certificate.
struct CertFacts {
    not_before: u64,
    not_after: u64,
    tcb: BTreeMap<&'static str, u64>,
    /// The chip's hardware id (extension 1.3.6.1.4.1.3704.1.4): 64 bytes, 8 on Turin.
    hwid: Option<Vec<u8>>,
}

const HWID_OID: &str = "1.3.6.1.4.1.3704.1.4";

fn cert_facts(der_bytes: &[u8], which: &str) -> Result<CertFacts, Rejection> {
    let c = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|e| malformed("SEV-SNP certificate", format!("{which}: {e}")))?;
    let v = &c.tbs_certificate.validity;
    let mut tcb = BTreeMap::new();
    let mut hwid = None;
    for ext in c.tbs_certificate.extensions.iter().flatten() {
        let oid = ext.extn_id.to_string();
        if oid == HWID_OID {
            hwid = Some(ext.extn_value.as_bytes().to_vec());
        }
        if let Some((_, name)) = TCB_OIDS.iter().find(|(o, _)| *o == oid) {
            // The value is a DER INTEGER.
            let n = der::asn1::Int::from_der(ext.extn_value.as_bytes())
                .map_err(|e| malformed("SEV-SNP certificate", format!("{which} {name}: {e}")))?;
            let raw = n.as_bytes();
            // A leading zero byte only keeps the DER integer positive.
            let b = &raw[raw.iter().take_while(|x| **x == 0).count()..];
            if b.len() > 8 {
                return Err(malformed(
                    "SEV-SNP certificate",
                    format!("{which} {name}: a TCB value of {} bytes", b.len()),
                ));
            }
            let value = b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x));
            tcb.insert(*name, value);
        }
    }
    Ok(CertFacts {
        not_before: v.not_before.to_unix_duration().as_secs(),
        not_after: v.not_after.to_unix_duration().as_secs(),
        tcb,
        hwid,
    })
}

pub(crate) fn verify(
    evidence: &Evidence<'_>,
    endorsements: &Endorsements,
    policy: &Policy,
    now: u64,
) -> Result<Claims, Rejection> {
    let report = AttestationReport::from_bytes(evidence.bytes)
        .map_err(|e| malformed("SEV-SNP report", e.to_string()))?;
    // `sev` checks the signature over its own re-encoding of the parsed report, which drops
    // fields it does not keep (reserved bytes). Only a report that re-encodes to exactly the
    // bytes given is accepted, so every signed byte is covered.
    let canonical = report
        .to_bytes()
        .map_err(|e| malformed("SEV-SNP report", e.to_string()))?;
    if canonical.as_ref() != evidence.bytes {
        return Err(malformed(
            "SEV-SNP report",
            "non-canonical encoding (reserved bytes or fields the parser does not keep)",
        ));
    }
    // R and S are P-384 values (48 bytes) zero-extended to 72 bytes, little-endian. The
    // verifier reads only the low 48, so nonzero padding would be a second encoding of the
    // same signature: refused, so that a changed byte anywhere is a rejection.
    let sig = &report.signature;
    if sig.r()[48..].iter().chain(&sig.s()[48..]).any(|b| *b != 0) {
        return Err(malformed(
            "SEV-SNP report",
            "signature R or S has nonzero bytes above its 48-byte P-384 value",
        ));
    }
    let t = &report.reported_tcb;
    let mut versions = BTreeMap::from([
        ("vmpl".to_string(), u64::from(report.vmpl)),
        ("guest_svn".to_string(), u64::from(report.guest_svn)),
        ("report_version".to_string(), u64::from(report.version)),
        ("tcb_bootloader".to_string(), u64::from(t.bootloader)),
        ("tcb_tee".to_string(), u64::from(t.tee)),
        ("tcb_snp".to_string(), u64::from(t.snp)),
        ("tcb_microcode".to_string(), u64::from(t.microcode)),
    ]);
    versions.insert("policy".to_string(), u64::from(report.policy));
    if let Some(fmc) = t.fmc {
        versions.insert("tcb_fmc".to_string(), u64::from(fmc));
    }
    let measurements = BTreeMap::from([
        ("chip_id".to_string(), hex::encode(report.chip_id)),
        ("measurement".to_string(), hex::encode(report.measurement)),
        ("host_data".to_string(), hex::encode(report.host_data)),
        ("family_id".to_string(), hex::encode(report.family_id)),
        ("image_id".to_string(), hex::encode(report.image_id)),
    ]);
    let mut claims = Claims {
        format: Format::Snp,
        measurements,
        versions,
        tcb_status: "NotApplicable".into(),
        advisories: Vec::new(),
        debug: report.policy.debug_allowed(),
        report_data: hex::encode(report.report_data),
        collateral: BTreeMap::new(),
        collateral_issued_at: None,
        evidence_created_at: None,
        verified_at: now,
    };
    if claims.debug && !policy.allow_debug {
        return Err(Rejection::Debug);
    }

    // Only reports signed by the chip's VCEK are supported; a VLEK needs AMD's ASVK chain,
    // and a masked chip key means the firmware did not sign at all.
    if report.key_info.mask_chip_key() {
        return Err(Rejection::NotAuthentic(
            "the report is not signed (MASK_CHIP_KEY is set)".into(),
        ));
    }
    match report.key_info.signing_key() {
        0 => {}
        1 => {
            return Err(Rejection::NotAuthentic(
                "the report is signed by a VLEK; only VCEK-signed reports are supported".into(),
            ))
        }
        other => {
            return Err(Rejection::NotAuthentic(format!(
                "the report names signing key {other}, not the VCEK"
            )))
        }
    }
    let vcek_der = endorsements
        .snp_vcek
        .as_deref()
        .ok_or(Rejection::MissingEndorsement(
            "the VCEK certificate (--vcek)",
        ))?;
    claims.collateral.insert(
        "vcek_sha256".into(),
        hex::encode(sealdb_crypto::sha256(vcek_der)),
    );
    let vcek = Certificate::from_der(vcek_der)
        .map_err(|e| malformed("VCEK certificate", e.to_string()))?;
    // The product's roots: whichever built-in ARK/ASK pair signs this VCEK.
    let roots = [
        (builtin::milan::ARK, builtin::milan::ASK),
        (builtin::genoa::ARK, builtin::genoa::ASK),
        (builtin::turin::ARK, builtin::turin::ASK),
    ];
    let mut chain = None;
    for (ark_pem, ask_pem) in roots {
        let (Ok(ark), Ok(ask)) = (
            Certificate::from_pem(ark_pem),
            Certificate::from_pem(ask_pem),
        ) else {
            continue;
        };
        let c = Chain {
            ca: ca::Chain { ark, ask },
            vek: vcek.clone(),
        };
        if (&c).verify().is_ok() {
            chain = Some((c, ark_pem, ask_pem));
            break;
        }
    }
    let (chain, ark_pem, ask_pem) = chain.ok_or_else(|| {
        Rejection::NotAuthentic("the VCEK does not chain to an AMD root (ARK/ASK)".into())
    })?;
    for (bytes, which) in [
        (crate::pem_to_der(ark_pem).unwrap_or_default(), "ARK"),
        (crate::pem_to_der(ask_pem).unwrap_or_default(), "ASK"),
        (vcek_der.to_vec(), "VCEK"),
    ] {
        let facts = cert_facts(&bytes, which)?;
        if now < facts.not_before || now > facts.not_after {
            return Err(Rejection::NotAuthentic(format!(
                "the {which} certificate is not valid at {now} (valid {} to {})",
                facts.not_before, facts.not_after
            )));
        }
    }
    (&chain, &report)
        .verify()
        .map_err(|e| Rejection::NotAuthentic(format!("report signature: {e}")))?;
    let facts = cert_facts(vcek_der, "VCEK")?;
    // The VCEK must be this chip's: its hardware id is the report's CHIP_ID (the first
    // 8 bytes on Turin).
    match &facts.hwid {
        Some(h)
            if !h.is_empty()
                && report.chip_id.starts_with(h)
                && (h.len() == 64 || h.len() == 8) => {}
        Some(h) => {
            return Err(Rejection::NotAuthentic(format!(
                "the VCEK is for chip {}, not the report's {}",
                hex::encode(h),
                hex::encode(report.chip_id)
            )))
        }
        None => {
            return Err(Rejection::NotAuthentic(
                "the VCEK has no hardware id extension".into(),
            ))
        }
    }
    if facts.tcb.contains_key("fmc") && t.fmc.is_none() {
        return Err(Rejection::NotAuthentic(
            "the VCEK has an FMC TCB value and the report has none".into(),
        ));
    }
    let vcek_tcb = facts.tcb;
    for (name, reported) in [
        ("bootloader", u64::from(t.bootloader)),
        ("tee", u64::from(t.tee)),
        ("snp", u64::from(t.snp)),
        ("microcode", u64::from(t.microcode)),
    ]
    .into_iter()
    .chain(t.fmc.map(|f| ("fmc", u64::from(f))))
    {
        match vcek_tcb.get(name) {
            Some(v) if *v == reported => {}
            Some(v) => {
                return Err(Rejection::NotAuthentic(format!(
                    "reported TCB {name} {reported} differs from the VCEK's {v}"
                )))
            }
            None => {
                return Err(Rejection::NotAuthentic(format!(
                    "the VCEK has no {name} TCB extension"
                )))
            }
        }
    }
    Ok(claims)
}

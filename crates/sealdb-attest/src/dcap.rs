//! Intel DCAP quotes (SGX v3, TDX v4/v5) through `dcap-qvl`: parse, refuse debug before
//! anything else, then verify the quote, its PCK chain, CRLs and the TCB collateral at `now`.

use std::collections::BTreeMap;

use dcap_qvl::quote::{Quote, Report};

use crate::{Claims, Endorsements, Evidence, Format, Policy, Rejection};

/// SGX ATTRIBUTES.DEBUG (bit 1 of the attributes' flags).
const SGX_DEBUG: u8 = 0x02;
/// TDX TDATTRIBUTES.DEBUG (bit 0).
const TDX_DEBUG: u8 = 0x01;

pub(crate) fn verify(
    evidence: &Evidence<'_>,
    endorsements: &Endorsements,
    policy: &Policy,
    now: u64,
) -> Result<Claims, Rejection> {
    let quote = Quote::parse(evidence.bytes).map_err(|e| Rejection::Malformed {
        what: "DCAP quote",
        detail: format!("{e:#}"),
    })?;
    let mut claims = claims_of(&quote.report, now);
    match (&quote.report, evidence.format) {
        (Report::SgxEnclave(_), Format::Sgx) => {}
        (Report::TD10(_) | Report::TD15(_) | Report::TD15Ex(_), Format::Tdx) => {}
        _ => {
            return Err(Rejection::Malformed {
                what: "DCAP quote",
                detail: format!("the quote is not a {:?} quote", evidence.format),
            })
        }
    }
    if claims.debug && !policy.allow_debug {
        return Err(Rejection::Debug);
    }
    let collateral = endorsements
        .dcap
        .as_ref()
        .ok_or(Rejection::MissingEndorsement(
            "DCAP collateral (--collateral)",
        ))?;
    let verified = dcap_qvl::verify::QuoteVerifier::new_prod()
        .allow_debug(policy.allow_debug)
        .verify(evidence.bytes, collateral, now)
        .map_err(|e| Rejection::NotAuthentic(format!("{e:#}")))?;
    // dcap-qvl reports a revoked platform or quoting enclave as a status, not an error. A
    // revoked TCB is never acceptable, whatever the policy says.
    use dcap_qvl::tcb_info::TcbStatus;
    let revoked = |s: &TcbStatus| matches!(s, TcbStatus::Revoked);
    if revoked(&verified.platform_status.status) || revoked(&verified.qe_status.status) {
        return Err(Rejection::NotAuthentic(format!(
            "TCB revoked (platform {:?}, quoting enclave {:?})",
            verified.platform_status.status, verified.qe_status.status
        )));
    }
    // The verified report is the one parsed above; take the claims from it to be sure.
    claims = claims_of(&verified.report, now);
    claims.tcb_status = verified.status;
    claims.advisories = verified.advisory_ids;
    describe_collateral(collateral, &mut claims)?;
    Ok(claims)
}

/// The issue dates and evaluation numbers of the (verified) TCB info and QE identity.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dated {
    issue_date: String,
    next_update: String,
    tcb_evaluation_data_number: u64,
}

/// Records what the collateral was: digests, issue dates (TCB info and QE identity
/// `issueDate`, CRL `thisUpdate`) and TCB evaluation data numbers (as versions, so a policy
/// can require a minimum).
fn describe_collateral(
    c: &dcap_qvl::QuoteCollateralV3,
    claims: &mut Claims,
) -> Result<(), Rejection> {
    let digest = |b: &[u8]| hex::encode(sealdb_crypto::sha256(b));
    let m = &mut claims.collateral;
    m.insert("tcb_info_sha256".into(), digest(c.tcb_info.as_bytes()));
    m.insert(
        "qe_identity_sha256".into(),
        digest(c.qe_identity.as_bytes()),
    );
    m.insert("pck_crl_sha256".into(), digest(&c.pck_crl));
    m.insert("root_ca_crl_sha256".into(), digest(&c.root_ca_crl));
    let mut oldest = u64::MAX;
    for (name, json) in [("tcb_info", &c.tcb_info), ("qe_identity", &c.qe_identity)] {
        let bad = |detail: String| Rejection::Malformed {
            what: "DCAP collateral",
            detail: format!("{name}: {detail}"),
        };
        let d: Dated = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        for (field, value) in [
            ("issue_date", &d.issue_date),
            ("next_update", &d.next_update),
        ] {
            let t = crate::utc_seconds(value)
                .ok_or_else(|| bad(format!("{field} {value:?} is not an RFC 3339 UTC time")))?;
            m.insert(format!("{name}_{field}"), t.to_string());
            if field == "issue_date" {
                oldest = oldest.min(t);
            }
        }
        claims.versions.insert(
            format!("{name}_tcb_evaluation_data_number"),
            d.tcb_evaluation_data_number,
        );
    }
    for (name, der_bytes) in [("pck_crl", &c.pck_crl), ("root_ca_crl", &c.root_ca_crl)] {
        use der::Decode;
        let crl = x509_cert::crl::CertificateList::from_der(der_bytes).map_err(|e| {
            Rejection::Malformed {
                what: "DCAP collateral",
                detail: format!("{name}: {e}"),
            }
        })?;
        let t = crl.tbs_cert_list.this_update.to_unix_duration().as_secs();
        m.insert(format!("{name}_this_update"), t.to_string());
        // The root CA's CRL is reissued about once a year, so it does not count towards the
        // collateral's age; the PCK CRL is reissued with the rest.
        if name == "pck_crl" {
            oldest = oldest.min(t);
        }
    }
    claims.collateral_issued_at = Some(oldest);
    Ok(())
}

fn claims_of(report: &Report, now: u64) -> Claims {
    let mut m = BTreeMap::new();
    let mut v = BTreeMap::new();
    let (format, debug, report_data) = match report {
        Report::SgxEnclave(r) => {
            m.insert("mr_enclave".into(), hex::encode(r.mr_enclave));
            m.insert("mr_signer".into(), hex::encode(r.mr_signer));
            m.insert("attributes".into(), hex::encode(r.attributes));
            m.insert("cpu_svn".into(), hex::encode(r.cpu_svn));
            // Key Separation and Sharing fields live in the report's reserved areas.
            m.insert("isv_ext_prod_id".into(), hex::encode(&r.reserved1[12..28]));
            m.insert("config_id".into(), hex::encode(&r.reserved3[32..96]));
            m.insert("isv_family_id".into(), hex::encode(&r.reserved4[44..60]));
            v.insert("isv_prod_id".into(), u64::from(r.isv_prod_id));
            v.insert("isv_svn".into(), u64::from(r.isv_svn));
            v.insert("misc_select".into(), u64::from(r.misc_select));
            v.insert(
                "config_svn".into(),
                u64::from(u16::from_le_bytes([r.reserved4[0], r.reserved4[1]])),
            );
            (Format::Sgx, r.attributes[0] & SGX_DEBUG != 0, r.report_data)
        }
        Report::TD10(r) => td(r, &mut m, &mut v),
        Report::TD15(r) => td(&r.base, &mut m, &mut v),
        Report::TD15Ex(r) => td(&r.base.base, &mut m, &mut v),
    };
    Claims {
        format,
        measurements: m,
        versions: v,
        tcb_status: String::new(),
        advisories: Vec::new(),
        debug,
        report_data: hex::encode(report_data),
        collateral: BTreeMap::new(),
        collateral_issued_at: None,
        evidence_created_at: None,
        verified_at: now,
    }
}

fn td(
    r: &dcap_qvl::quote::TDReport10,
    m: &mut BTreeMap<String, String>,
    _v: &mut BTreeMap<String, u64>,
) -> (Format, bool, [u8; 64]) {
    m.insert("mr_td".into(), hex::encode(r.mr_td));
    m.insert("mr_config_id".into(), hex::encode(r.mr_config_id));
    m.insert("mr_owner".into(), hex::encode(r.mr_owner));
    m.insert("rtmr0".into(), hex::encode(r.rt_mr0));
    m.insert("rtmr1".into(), hex::encode(r.rt_mr1));
    m.insert("rtmr2".into(), hex::encode(r.rt_mr2));
    m.insert("rtmr3".into(), hex::encode(r.rt_mr3));
    m.insert("td_attributes".into(), hex::encode(r.td_attributes));
    m.insert("mr_seam".into(), hex::encode(r.mr_seam));
    m.insert("mr_owner_config".into(), hex::encode(r.mr_owner_config));
    m.insert("xfam".into(), hex::encode(r.xfam));
    m.insert("tee_tcb_svn".into(), hex::encode(r.tee_tcb_svn));
    (
        Format::Tdx,
        r.td_attributes[0] & TDX_DEBUG != 0,
        r.report_data,
    )
}

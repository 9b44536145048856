//! Intel DCAP collateral from PCS or a PCCS (API v4), as `dcap-qvl` expects it.
//!
//! | item | URL | issuer chain header |
//! |---|---|---|
//! | PCK CRL | `{base}/sgx/certification/v4/pckcrl?ca={processor,platform}&encoding=der` | `SGX-PCK-CRL-Issuer-Chain` |
//! | TCB info | `{base}/{sgx,tdx}/certification/v4/tcb?fmspc={FMSPC}` | `TCB-Info-Issuer-Chain` (or `SGX-TCB-Info-Issuer-Chain`) |
//! | QE identity | `{base}/{sgx,tdx}/certification/v4/qe/identity` | `SGX-Enclave-Identity-Issuer-Chain` |
//! | root CA CRL | PCCS: `{base}/sgx/certification/v4/rootcacrl` (hex); PCS: Intel's certificate site (DER) | — |
//!
//! The TCB info and QE identity are signed over their exact JSON text, so they are taken
//! from the response as raw JSON, never re-serialized.

use der::Decode;
use serde_json::value::RawValue;

use sealdb_attest::{Evidence, Format, Policy};

use crate::{FetchError, IntelService, Response, Run};

const PCK_CRL_CHAIN: &str = "SGX-PCK-CRL-Issuer-Chain";
const TCB_CHAIN: &str = "TCB-Info-Issuer-Chain";
const TCB_CHAIN_SGX: &str = "SGX-TCB-Info-Issuer-Chain";
const QE_CHAIN: &str = "SGX-Enclave-Identity-Issuer-Chain";

#[derive(serde::Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(serde::Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a RawValue,
    signature: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NextUpdate {
    next_update: String,
}

/// `nextUpdate` of the signed object under `field` of a JSON response.
fn json_next_update(body: &[u8], field: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let n: NextUpdate = serde_json::from_value(v.get(field)?.clone()).ok()?;
    sealdb_attest::utc_seconds(&n.next_update)
}

/// `nextUpdate` of a DER CRL.
fn crl_next_update(der_bytes: &[u8]) -> Option<u64> {
    let crl = x509_cert::crl::CertificateList::from_der(der_bytes).ok()?;
    crl.tbs_cert_list
        .next_update
        .as_ref()
        .map(crate::x509_seconds)
}

/// A CRL body: PCCS sends hex text, PCS sends DER.
fn crl_bytes(body: &[u8]) -> Vec<u8> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
        .unwrap_or_else(|| body.to_vec())
}

fn header(resp: &Response, url: &str, names: &[&str]) -> Result<String, FetchError> {
    names
        .iter()
        .find_map(|n| resp.headers.get(&n.to_ascii_lowercase()).cloned())
        .ok_or_else(|| FetchError::Response {
            url: url.to_string(),
            detail: format!("missing header {}", names.join(" or ")),
        })
}

fn bad(url: &str, detail: impl Into<String>) -> FetchError {
    FetchError::Response {
        url: url.to_string(),
        detail: detail.into(),
    }
}

pub(crate) fn collateral(run: &mut Run<'_>, quote: &[u8]) -> Result<String, FetchError> {
    let parsed = dcap_qvl::quote::Quote::parse(quote)
        .map_err(|e| FetchError::Evidence(format!("not a DCAP quote: {e:#}")))?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&parsed).map_err(|e| {
        FetchError::Evidence(format!(
            "no FMSPC from the quote's PCK certificate chain (only quotes that carry the \
             chain, certification data type 5, are supported): {e:#}"
        ))
    })?;
    let ca = dcap_qvl::intel::quote_ca(&parsed)
        .map_err(|e| FetchError::Evidence(format!("PCK certificate: {e:#}")))?
        .as_id_str();
    let fmspc = hex::encode_upper(fmspc);
    let tee = if parsed.header.is_sgx() { "sgx" } else { "tdx" };
    let (base, pccs) = match &run.fetcher().intel {
        IntelService::Pcs(u) => (u.clone(), false),
        IntelService::Pccs(u) => (u.clone(), true),
    };
    let url = |tee: &str, path: &str| format!("{base}/{tee}/certification/v4/{path}");

    let crl_url = url("sgx", &format!("pckcrl?ca={ca}&encoding=der"));
    let r = run.get(
        &crl_url,
        &[PCK_CRL_CHAIN],
        |r| crl_next_update(&crl_bytes(&r.body)),
        false,
    )?;
    let pck_crl_issuer_chain = header(&r, &crl_url, &[PCK_CRL_CHAIN])?;
    let pck_crl = crl_bytes(&r.body);

    let tcb_url = url(tee, &format!("tcb?fmspc={fmspc}"));
    let chains = [TCB_CHAIN, TCB_CHAIN_SGX];
    let r = run.get(
        &tcb_url,
        &chains,
        |r| json_next_update(&r.body, "tcbInfo"),
        false,
    )?;
    let tcb_info_issuer_chain = header(&r, &tcb_url, &chains)?;
    let t: TcbInfoResponse<'_> =
        serde_json::from_slice(&r.body).map_err(|e| bad(&tcb_url, format!("TCB info: {e}")))?;
    let tcb_info = t.tcb_info.get().to_string();
    let tcb_info_signature =
        hex::decode(&t.signature).map_err(|e| bad(&tcb_url, format!("TCB info signature: {e}")))?;

    let qe_url = url(tee, "qe/identity");
    let r = run.get(
        &qe_url,
        &[QE_CHAIN],
        |r| json_next_update(&r.body, "enclaveIdentity"),
        false,
    )?;
    let qe_identity_issuer_chain = header(&r, &qe_url, &[QE_CHAIN])?;
    let q: QeIdentityResponse<'_> =
        serde_json::from_slice(&r.body).map_err(|e| bad(&qe_url, format!("QE identity: {e}")))?;
    let qe_identity = q.enclave_identity.get().to_string();
    let qe_identity_signature = hex::decode(&q.signature)
        .map_err(|e| bad(&qe_url, format!("QE identity signature: {e}")))?;

    let root_url = if pccs {
        url("sgx", "rootcacrl")
    } else {
        run.fetcher().root_ca_crl_url.clone()
    };
    let r = run.get(
        &root_url,
        &[],
        |r| crl_next_update(&crl_bytes(&r.body)),
        false,
    )?;
    let root_ca_crl = crl_bytes(&r.body);

    let c = dcap_qvl::QuoteCollateralV3 {
        pck_crl_issuer_chain,
        root_ca_crl,
        pck_crl,
        tcb_info_issuer_chain,
        tcb_info,
        tcb_info_signature,
        qe_identity_issuer_chain,
        qe_identity,
        qe_identity_signature,
        pck_certificate_chain: None,
    };
    let json = serde_json::to_string(&c).map_err(|e| FetchError::Response {
        url: tcb_url.clone(),
        detail: format!("collateral JSON: {e}"),
    })?;
    // Only collateral that verifies the quote now is cached (debug aside: that is the
    // policy's business, not the collateral's).
    let verdict = sealdb_attest::Endorsements::dcap_collateral_json(&json)
        .and_then(|e| {
            let format = if tee == "sgx" {
                Format::Sgx
            } else {
                Format::Tdx
            };
            let policy = Policy {
                allow_debug: true,
                ..Policy::default()
            };
            sealdb_attest::verify(
                &Evidence {
                    format,
                    bytes: quote,
                },
                &e,
                &policy,
                None,
                run.now(),
            )
        })
        .map(|_| ())
        .map_err(|e| format!("it does not verify the quote now: {e}"));
    run.commit(verdict);
    Ok(json)
}

/// Every decoder of a PCS/PCCS response body, for the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_responses(body: &[u8]) {
    let _ = serde_json::from_slice::<TcbInfoResponse<'_>>(body).map(|t| hex::decode(t.signature));
    let _ =
        serde_json::from_slice::<QeIdentityResponse<'_>>(body).map(|q| hex::decode(q.signature));
    let _ = json_next_update(body, "tcbInfo");
    let _ = json_next_update(body, "enclaveIdentity");
    let _ = crl_next_update(&crl_bytes(body));
}

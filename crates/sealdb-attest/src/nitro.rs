//! AWS Nitro Enclaves attestation documents: COSE_Sign1 (ES384) over a CBOR map, signed by a
//! leaf certificate that chains through the document's `cabundle` to the AWS Nitro root G1.
//!
//! Checks, in order: structure; debug (PCR0–2 all zero, refused unless the policy allows it);
//! the bundle's first certificate is the pinned root; every certificate is valid at `now` and
//! signed by the one before it (ECDSA P-384/SHA-384); the COSE signature with the leaf key.

use std::collections::BTreeMap;

use ciborium::value::Value;
use der::{Decode, Encode};
use sealdb_crypto::{sha256, verify_ecdsa_p384_sha384, EcdsaEncoding};
use x509_cert::Certificate;

use crate::{Claims, Endorsements, Evidence, Format, Policy, Rejection};

/// SHA-256 of the DER of the AWS Nitro Enclaves root G1 certificate (valid to 2049), as AWS
/// publishes it.
const NITRO_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";
/// COSE algorithm id of ES384.
const ES384: i128 = -35;
/// OID of ecdsa-with-SHA384.
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::Malformed {
        what: "Nitro attestation document",
        detail: detail.into(),
    }
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

fn bytes_field<'a>(map: &'a [(Value, Value)], name: &str) -> Result<&'a [u8], Rejection> {
    field(map, name)
        .and_then(Value::as_bytes)
        .map(Vec::as_slice)
        .ok_or_else(|| malformed(format!("missing or non-bytes field {name}")))
}

/// The parts of a COSE_Sign1 document.
struct Sign1 {
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn parse_sign1(bytes: &[u8]) -> Result<Sign1, Rejection> {
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader(&mut rest).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the COSE_Sign1 structure"));
    }
    let v = match v {
        Value::Tag(18, inner) => *inner,
        other => other,
    };
    let Value::Array(parts) = v else {
        return Err(malformed("not a COSE_Sign1 array"));
    };
    let [protected, unprotected, payload, signature] = parts.as_slice() else {
        return Err(malformed("COSE_Sign1 must have 4 parts"));
    };
    // RFC 9052: the unprotected header is a map. It is not signed, so nothing in it is
    // used, but a document whose structure is wrong is refused rather than half-read.
    if !matches!(unprotected, Value::Map(_)) {
        return Err(malformed("COSE unprotected header is not a map"));
    }
    let get = |v: &Value, what: &str| {
        v.as_bytes()
            .cloned()
            .ok_or_else(|| malformed(format!("COSE {what} is not a byte string")))
    };
    Ok(Sign1 {
        protected: get(protected, "protected header")?,
        payload: get(payload, "payload")?,
        signature: get(signature, "signature")?,
    })
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

/// A parsed certificate with what chain checks need.
struct Cert {
    tbs: Vec<u8>,
    signature: Vec<u8>,
    algorithm: String,
    public_key: Vec<u8>,
    not_before: u64,
    not_after: u64,
    /// basicConstraints cA (false when the extension is absent).
    is_ca: bool,
}

fn parse_cert(der_bytes: &[u8], which: &str) -> Result<Cert, Rejection> {
    let c = Certificate::from_der(der_bytes)
        .map_err(|e| malformed(format!("certificate {which}: {e}")))?;
    let tbs = c
        .tbs_certificate
        .to_der()
        .map_err(|e| malformed(format!("certificate {which}: {e}")))?;
    let v = &c.tbs_certificate.validity;
    let mut is_ca = false;
    for ext in c.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id.to_string() == "2.5.29.19" {
            let bc = x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes())
                .map_err(|e| malformed(format!("certificate {which} basicConstraints: {e}")))?;
            is_ca = bc.ca;
        }
    }
    Ok(Cert {
        is_ca,
        tbs,
        signature: c.signature.raw_bytes().to_vec(),
        algorithm: c.signature_algorithm.oid.to_string(),
        public_key: c
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec(),
        not_before: v.not_before.to_unix_duration().as_secs(),
        not_after: v.not_after.to_unix_duration().as_secs(),
    })
}

fn check_signed_by(cert: &Cert, issuer: &Cert, which: &str) -> Result<(), Rejection> {
    if cert.algorithm != ECDSA_SHA384 {
        return Err(Rejection::NotAuthentic(format!(
            "certificate {which} is not signed with ecdsa-with-SHA384"
        )));
    }
    verify_ecdsa_p384_sha384(
        &issuer.public_key,
        &cert.tbs,
        &cert.signature,
        EcdsaEncoding::Asn1,
    )
    .map_err(|_| Rejection::NotAuthentic(format!("certificate {which}: bad signature")))
}

fn check_validity(cert: &Cert, which: &str, now: u64) -> Result<(), Rejection> {
    if now < cert.not_before || now > cert.not_after {
        return Err(Rejection::NotAuthentic(format!(
            "certificate {which} is not valid at {now} (valid {} to {})",
            cert.not_before, cert.not_after
        )));
    }
    Ok(())
}

pub(crate) fn verify(
    evidence: &Evidence<'_>,
    endorsements: &Endorsements,
    policy: &Policy,
    now: u64,
) -> Result<Claims, Rejection> {
    let doc = parse_sign1(evidence.bytes)?;
    let header: Value = ciborium::de::from_reader(doc.protected.as_slice())
        .map_err(|e| malformed(e.to_string()))?;
    let alg = header
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_integer() == Some(1.into())))
        .and_then(|(_, v)| v.as_integer())
        .map(i128::from);
    if alg != Some(ES384) {
        return Err(malformed("COSE algorithm is not ES384"));
    }
    let payload: Value =
        ciborium::de::from_reader(doc.payload.as_slice()).map_err(|e| malformed(e.to_string()))?;
    let map = payload
        .as_map()
        .ok_or_else(|| malformed("payload is not a map"))?;

    let mut measurements = BTreeMap::new();
    let pcrs = field(map, "pcrs")
        .and_then(Value::as_map)
        .ok_or_else(|| malformed("missing pcrs"))?;
    // In debug mode the enclave image PCRs (0, 1, 2) read as zeros; PCR3/4 (IAM role,
    // instance) are still set by the host. PCR0..2 must be present.
    let mut image_pcrs = [None::<bool>; 3];
    for (k, v) in pcrs {
        let index = k
            .as_integer()
            .map(i128::from)
            .ok_or_else(|| malformed("PCR index is not an integer"))?;
        let value = v
            .as_bytes()
            .ok_or_else(|| malformed("PCR value is not bytes"))?;
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| image_pcrs.get_mut(i))
        {
            if slot.is_some() {
                return Err(malformed(format!("PCR{index} appears twice")));
            }
            *slot = Some(value.is_empty() || value.iter().all(|b| *b == 0));
        }
        measurements.insert(format!("pcr{index}"), hex::encode(value));
    }
    let [Some(pcr0_zero), Some(_), Some(_)] = image_pcrs else {
        return Err(malformed("PCR0, PCR1 or PCR2 is missing"));
    };
    if let Some(id) = field(map, "module_id").and_then(Value::as_text) {
        measurements.insert("module_id".into(), id.to_string());
    }
    // Milliseconds since the Unix epoch (AWS: a required field).
    let created_ms = field(map, "timestamp")
        .and_then(Value::as_integer)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| malformed("missing or non-integer timestamp"))?;
    let user_data = field(map, "user_data")
        .and_then(Value::as_bytes)
        .cloned()
        .unwrap_or_default();
    let mut claims = Claims {
        format: Format::Nitro,
        measurements,
        versions: BTreeMap::new(),
        tcb_status: "NotApplicable".into(),
        advisories: Vec::new(),
        // A debug enclave's image PCRs are all zero: the host can read its memory. PCR0 (the
        // image) alone decides, so a document cannot look non-debug by its other PCRs.
        debug: pcr0_zero,
        report_data: hex::encode(&user_data),
        collateral: BTreeMap::new(),
        collateral_issued_at: None,
        evidence_created_at: Some(created_ms / 1000),
        verified_at: now,
    };
    if claims.debug && !policy.allow_debug {
        return Err(Rejection::Debug);
    }

    let leaf = parse_cert(bytes_field(map, "certificate")?, "leaf")?;
    let bundle = field(map, "cabundle")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("missing cabundle"))?;
    let mut chain = Vec::new();
    for (i, c) in bundle.iter().enumerate() {
        let der_bytes = c
            .as_bytes()
            .ok_or_else(|| malformed("cabundle entry is not bytes"))?;
        if i == 0 {
            let fp = hex::encode(sha256(der_bytes));
            let trusted = match &endorsements.nitro_root {
                Some(root) => fp == hex::encode(sha256(root)),
                None => fp == NITRO_ROOT_G1_SHA256,
            };
            if !trusted {
                return Err(Rejection::NotAuthentic(
                    "the certificate bundle does not start at the trusted Nitro root".into(),
                ));
            }
            claims.collateral.insert("root_sha256".into(), fp);
        }
        chain.push(parse_cert(der_bytes, &format!("cabundle[{i}]"))?);
    }
    let root = chain.first().ok_or_else(|| malformed("empty cabundle"))?;
    check_validity(root, "cabundle[0]", now)?;
    for i in 1..chain.len() {
        check_validity(&chain[i], &format!("cabundle[{i}]"), now)?;
        if !chain[i].is_ca {
            return Err(Rejection::NotAuthentic(format!(
                "cabundle[{i}] is not a CA certificate"
            )));
        }
        check_signed_by(&chain[i], &chain[i - 1], &format!("cabundle[{i}]"))?;
    }
    check_validity(&leaf, "leaf", now)?;
    if leaf.is_ca {
        return Err(Rejection::NotAuthentic(
            "the signing certificate is a CA certificate".into(),
        ));
    }
    check_signed_by(&leaf, chain.last().expect("non-empty"), "leaf")?;

    let to_sign = cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(doc.protected.clone()),
        Value::Bytes(Vec::new()),
        Value::Bytes(doc.payload.clone()),
    ]));
    verify_ecdsa_p384_sha384(
        &leaf.public_key,
        &to_sign,
        &doc.signature,
        EcdsaEncoding::Fixed,
    )
    .map_err(|_| Rejection::NotAuthentic("the document's COSE signature is invalid".into()))?;
    Ok(claims)
}

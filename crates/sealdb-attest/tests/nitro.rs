//! AWS Nitro attestation documents from real enclaves (`../shared/testvectors/nitro`).

use sealdb_attest::{verify, Claims, Endorsements, Evidence, Format, Policy, Rejection};

const REF: u64 = 1_736_179_625;
const DEBUG_REF: u64 = 1_665_583_200;
const TODAY: u64 = 1_796_342_400;

fn vector(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testvectors/nitro")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn check(doc: &[u8], e: &Endorsements, policy: &Policy, now: u64) -> Result<Claims, Rejection> {
    verify(
        &Evidence {
            format: Format::Nitro,
            bytes: doc,
        },
        e,
        policy,
        None,
        now,
    )
}

#[test]
fn real_document_is_accepted_at_its_time_and_rejected_today() {
    let doc = vector("attestation.cose");
    let c = check(&doc, &Endorsements::default(), &Policy::default(), REF).unwrap();
    assert!(!c.debug);
    assert_eq!(c.measurements["pcr0"].len(), 96);
    assert!(c.measurements["module_id"].starts_with("i-0bee92034f3d60691"));
    let r = check(&doc, &Endorsements::default(), &Policy::default(), TODAY);
    assert!(
        matches!(r, Err(Rejection::NotAuthentic(ref m)) if m.contains("not valid")),
        "{r:?}"
    );
    // Pinning a PCR in the policy.
    let pinned = Policy::from_toml(&format!(
        "[measurements]\npcr0 = [\"{}\"]\n",
        c.measurements["pcr0"]
    ))
    .unwrap();
    check(&doc, &Endorsements::default(), &pinned, REF).unwrap();
    let other = Policy::from_toml("[measurements]\npcr0 = [\"00\"]\n").unwrap();
    assert!(matches!(
        check(&doc, &Endorsements::default(), &other, REF),
        Err(Rejection::Policy(_))
    ));
}

#[test]
fn the_documents_creation_time_is_claimed_and_its_age_policed() {
    let doc = vector("attestation.cose");
    let c = check(&doc, &Endorsements::default(), &Policy::default(), REF).unwrap();
    // The sample's timestamp is 1736179625472 ms, rounded down; the reference time is
    // the document's own (its leaf certificate lasts ~3 hours).
    let made = c.evidence_created_at.expect("Nitro documents are dated");
    assert_eq!(made, 1_736_179_625);
    // A minute later, the document is 60 s (plus whatever it was at REF) old.
    let now = REF + 60;
    let age = now - made;
    let at_most = |secs: u64| {
        let p = Policy::from_toml(&format!("max_evidence_age_secs = {secs}\n")).unwrap();
        check(&doc, &Endorsements::default(), &p, now)
    };
    at_most(age).unwrap();
    let e = at_most(age - 1).unwrap_err();
    assert!(
        matches!(e, Rejection::Policy(ref m) if m.contains("s old")),
        "{e}"
    );
    // Without a timestamp, or with a negative one, the document is malformed (found before
    // its signature is checked, which the change breaks anyway).
    use ciborium::Value;
    let Value::Array(mut parts) = ciborium::de::from_reader(&doc[..]).unwrap() else {
        panic!("not an array")
    };
    let body = parts[2].as_bytes().unwrap().clone();
    let Value::Map(payload) = ciborium::de::from_reader(&body[..]).unwrap() else {
        panic!("payload not a map")
    };
    for timestamp in [None, Some(Value::Integer((-1).into()))] {
        let mut fields: Vec<(Value, Value)> = payload
            .iter()
            .filter(|(k, _)| k.as_text() != Some("timestamp"))
            .cloned()
            .collect();
        if let Some(t) = timestamp.clone() {
            fields.push((Value::Text("timestamp".into()), t));
        }
        let mut body = Vec::new();
        ciborium::ser::into_writer(&Value::Map(fields), &mut body).unwrap();
        parts[2] = Value::Bytes(body);
        let mut bad = Vec::new();
        ciborium::ser::into_writer(&Value::Array(parts.clone()), &mut bad).unwrap();
        let e = check(&bad, &Endorsements::default(), &Policy::default(), REF).unwrap_err();
        assert!(
            matches!(e, Rejection::Malformed { ref detail, .. } if detail.contains("timestamp")),
            "{timestamp:?}: {e}"
        );
    }
}

#[test]
fn debug_enclave_is_refused_by_default_but_its_signature_is_valid() {
    let doc = vector("debug-mode-doc.cbor");
    assert_eq!(
        check(
            &doc,
            &Endorsements::default(),
            &Policy::default(),
            DEBUG_REF
        ),
        Err(Rejection::Debug)
    );
    let lax = Policy {
        allow_debug: true,
        ..Policy::default()
    };
    let c = check(&doc, &Endorsements::default(), &lax, DEBUG_REF).unwrap();
    assert!(c.debug);
}

#[test]
fn the_root_is_pinned() {
    let doc = vector("attestation.cose");
    // The test vectors' root file is the same certificate as the pinned fingerprint.
    let root = sealdb_attest::pem_to_der(&vector("aws-nitro-root-g1.pem")).unwrap();
    check(
        &doc,
        &Endorsements::default().with_nitro_root(root),
        &Policy::default(),
        REF,
    )
    .unwrap();
    // Another root (here: the leaf of the chain) is not trusted.
    let other = Endorsements::default().with_nitro_root(vector("chain-4.der"));
    assert!(matches!(
        check(&doc, &other, &Policy::default(), REF),
        Err(Rejection::NotAuthentic(_))
    ));
}

#[test]
fn a_flipped_byte_is_rejected_and_garbage_never_panics() {
    let doc = vector("attestation.cose");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pos = (x % doc.len() as u64) as usize;
        let mut bad = doc.clone();
        bad[pos] ^= 1 << (x >> 61);
        assert!(
            check(&bad, &Endorsements::default(), &Policy::default(), REF).is_err(),
            "flip at {pos} accepted"
        );
    }
    // Every bit of the COSE framing (tag, array, protected header, unprotected header):
    // the unprotected header is not signed, so only the structure check refuses it.
    for pos in 0..16 {
        for bit in 0..8 {
            let mut bad = doc.clone();
            bad[pos] ^= 1 << bit;
            assert!(
                check(&bad, &Endorsements::default(), &Policy::default(), REF).is_err(),
                "flip of bit {bit} at {pos} accepted"
            );
        }
    }
    for cut in [0, 1, 10, doc.len() / 2, doc.len() - 1] {
        let r = check(
            &doc[..cut],
            &Endorsements::default(),
            &Policy::default(),
            REF,
        );
        assert!(
            matches!(r, Err(Rejection::Malformed { .. })),
            "cut at {cut}: {r:?}"
        );
    }
}

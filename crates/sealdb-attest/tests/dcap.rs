//! Intel DCAP evidence from real hardware (`../shared/testvectors/dcap`, see its README).

use sealdb_attest::{verify, Claims, Endorsements, Evidence, Format, Policy, Rejection};

const SGX_REF: u64 = 1_750_377_600;
const TDX_OUTDATED_REF: u64 = 1_771_459_200;
/// Today (2026-12-04): the collateral of every sample has expired.
const TODAY: u64 = 1_796_342_400;

fn vector(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testvectors/dcap")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn collateral(name: &str) -> Endorsements {
    Endorsements::dcap_collateral_json(std::str::from_utf8(&vector(name)).unwrap()).unwrap()
}

fn check(
    format: Format,
    quote: &[u8],
    e: &Endorsements,
    policy: &Policy,
    rd: Option<&[u8]>,
    now: u64,
) -> Result<Claims, Rejection> {
    verify(
        &Evidence {
            format,
            bytes: quote,
        },
        e,
        policy,
        rd,
        now,
    )
}

#[test]
fn sgx_sample_is_accepted_at_its_reference_time_and_rejected_today() {
    let q = vector("sgx_quote");
    let e = collateral("sgx_quote_collateral.json");
    let c = check(
        Format::Sgx,
        &q,
        &e,
        &Policy::default(),
        Some(b"Hello, world!"),
        SGX_REF,
    )
    .unwrap();
    assert_eq!(c.tcb_status, "ConfigurationAndSWHardeningNeeded");
    for sa in ["INTEL-SA-00289", "INTEL-SA-00615"] {
        assert!(c.advisories.iter().any(|a| a == sa), "{:?}", c.advisories);
    }
    assert!(!c.debug);
    assert_eq!(c.measurements["mr_enclave"].len(), 64);
    // Key Separation and Sharing identity is exposed so a policy can pin it.
    assert_eq!(c.measurements["config_id"].len(), 128);
    assert!(c.versions.contains_key("config_svn"));
    assert!(matches!(
        check(Format::Sgx, &q, &e, &Policy::default(), None, TODAY),
        Err(Rejection::NotAuthentic(_))
    ));
}

#[test]
fn tdx_samples_give_their_expected_results() {
    let q = vector("tdx_quote");
    let e = collateral("tdx_quote_collateral.json");
    let c = check(Format::Tdx, &q, &e, &Policy::default(), None, SGX_REF).unwrap();
    assert_eq!(c.tcb_status, "UpToDate");
    assert!(c.measurements.contains_key("mr_td") && c.measurements.contains_key("rtmr3"));
    assert!(matches!(
        check(Format::Tdx, &q, &e, &Policy::default(), None, TODAY),
        Err(Rejection::NotAuthentic(_))
    ));
    // Quote v5 whose platform matches no TCB level of its collateral.
    let q = vector("tdx_quote_outdated");
    let e = collateral("tdx_quote_outdated_collateral.json");
    for now in [TDX_OUTDATED_REF, TODAY] {
        let r = check(Format::Tdx, &q, &e, &Policy::default(), None, now);
        assert!(
            matches!(r, Err(Rejection::NotAuthentic(ref m)) if now == TODAY || m.contains("TCB level")),
            "{r:?}"
        );
    }
}

#[test]
fn debug_samples_are_refused_by_the_default_policy() {
    let none = Endorsements::default();
    for (format, file) in [
        (Format::Sgx, "sgx_quote_debug_occlum.dat"),
        (Format::Tdx, "tdx_quote_debug_td.dat"),
    ] {
        let q = vector(file);
        assert_eq!(
            check(format, &q, &none, &Policy::default(), None, TODAY),
            Err(Rejection::Debug),
            "{file}"
        );
        // With debug allowed, the missing collateral is what stops it.
        let lax = Policy {
            allow_debug: true,
            ..Policy::default()
        };
        assert!(matches!(
            check(format, &q, &none, &lax, None, TODAY),
            Err(Rejection::MissingEndorsement(_))
        ));
    }
}

#[test]
fn a_flipped_byte_in_the_signed_body_or_signature_is_rejected() {
    // Signed body: 48-byte header + report (384 SGX, 584 TDX v4); then a 4-byte length and
    // the 64-byte ECDSA signature.
    for (format, file, coll, body) in [
        (
            Format::Sgx,
            "sgx_quote",
            "sgx_quote_collateral.json",
            48 + 384,
        ),
        (
            Format::Tdx,
            "tdx_quote",
            "tdx_quote_collateral.json",
            48 + 584,
        ),
    ] {
        let q = vector(file);
        let e = collateral(coll);
        check(format, &q, &e, &Policy::default(), None, SGX_REF).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pos = (x % (body as u64 + 4 + 64)) as usize;
            let mut bad = q.clone();
            bad[pos] ^= 1 << (x >> 60 & 7);
            let r = check(format, &bad, &e, &Policy::default(), None, SGX_REF);
            assert!(r.is_err(), "{file}: flip at {pos} accepted");
        }
    }
}

#[test]
fn wrong_report_data_and_policy_mismatches_are_rejected() {
    let q = vector("sgx_quote");
    let e = collateral("sgx_quote_collateral.json");
    let p = Policy::default();
    assert_eq!(
        check(Format::Sgx, &q, &e, &p, Some(b"Hello, world?"), SGX_REF),
        Err(Rejection::ReportDataMismatch)
    );
    let c = check(Format::Sgx, &q, &e, &p, None, SGX_REF).unwrap();
    let pinned = Policy::from_toml(&format!(
        "[measurements]\nmr_enclave = [\"{}\"]\n",
        c.measurements["mr_enclave"]
    ))
    .unwrap();
    check(Format::Sgx, &q, &e, &pinned, None, SGX_REF).unwrap();
    let other = Policy::from_toml("[measurements]\nmr_enclave = [\"00\"]\n").unwrap();
    assert!(matches!(
        check(Format::Sgx, &q, &e, &other, None, SGX_REF),
        Err(Rejection::Policy(_))
    ));
    let strict = Policy::from_toml("allowed_tcb_statuses = [\"UpToDate\"]\n").unwrap();
    assert!(matches!(
        check(Format::Sgx, &q, &e, &strict, None, SGX_REF),
        Err(Rejection::Policy(_))
    ));
    let svn = Policy::from_toml(&format!(
        "[min_versions]\nisv_svn = {}\n",
        c.versions["isv_svn"] + 1
    ))
    .unwrap();
    assert!(matches!(
        check(Format::Sgx, &q, &e, &svn, None, SGX_REF),
        Err(Rejection::Policy(_))
    ));
    let tdx_only = Policy::from_toml("formats = [\"tdx\"]\n").unwrap();
    assert!(matches!(
        check(Format::Sgx, &q, &e, &tdx_only, None, SGX_REF),
        Err(Rejection::Policy(_))
    ));
    assert!(Policy::from_toml("unknown_field = 1").is_err());
    // A TDX quote presented as SGX is malformed for that format.
    let t = vector("tdx_quote");
    assert!(matches!(
        check(Format::Sgx, &t, &e, &p, None, SGX_REF),
        Err(Rejection::Malformed { .. })
    ));
}

#[test]
fn collateral_is_described_and_policed_by_age_advisory_and_evaluation_number() {
    let q = vector("sgx_quote");
    let e = collateral("sgx_quote_collateral.json");
    let c = check(Format::Sgx, &q, &e, &Policy::default(), None, SGX_REF).unwrap();
    // The sample's dates: TCB info issued 2025-06-19T10:56:11Z, QE identity 10:01:18Z.
    assert_eq!(c.collateral["tcb_info_issue_date"], "1750330571");
    assert_eq!(c.collateral["qe_identity_issue_date"], "1750327278");
    // PCK CRL thisUpdate 10:23:18; the root CA CRL (2025-03-20) does not count for age.
    assert_eq!(c.collateral["pck_crl_this_update"], "1750328598");
    assert_eq!(c.collateral["root_ca_crl_this_update"], "1742469717");
    assert_eq!(c.collateral_issued_at, Some(1_750_327_278));
    assert_eq!(c.versions["tcb_info_tcb_evaluation_data_number"], 17);
    assert_eq!(c.versions["qe_identity_tcb_evaluation_data_number"], 17);
    for k in [
        "tcb_info_sha256",
        "qe_identity_sha256",
        "pck_crl_sha256",
        "root_ca_crl_sha256",
    ] {
        assert_eq!(c.collateral[k].len(), 64, "{k}");
    }
    let age = SGX_REF - 1_750_327_278;
    let policy = |toml: &str| Policy::from_toml(toml).unwrap();
    let run = |p: &Policy| check(Format::Sgx, &q, &e, p, None, SGX_REF);
    run(&policy(&format!("max_collateral_age_secs = {age}\n"))).unwrap();
    let r = run(&policy(&format!("max_collateral_age_secs = {}\n", age - 1)));
    assert!(
        matches!(r, Err(Rejection::Policy(ref m)) if m.contains("collateral")),
        "{r:?}"
    );
    let r = run(&policy("rejected_advisories = [\"intel-sa-00615\"]\n"));
    assert!(
        matches!(r, Err(Rejection::Policy(ref m)) if m.contains("00615")),
        "{r:?}"
    );
    run(&policy("rejected_advisories = [\"INTEL-SA-00999\"]\n")).unwrap();
    run(&policy(
        "[min_versions]\ntcb_info_tcb_evaluation_data_number = 17\n",
    ))
    .unwrap();
    assert!(matches!(
        run(&policy(
            "[min_versions]\ntcb_info_tcb_evaluation_data_number = 18\n"
        )),
        Err(Rejection::Policy(_))
    ));
}

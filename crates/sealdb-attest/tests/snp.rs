//! AMD SEV-SNP reports from real hardware (`../shared/testvectors/snp`).

use sealdb_attest::{verify, Claims, Endorsements, Evidence, Format, Policy, Rejection};

const TODAY: u64 = 1_796_342_400;
/// After the sample VCEKs expire (2030).
const YEAR_2032: u64 = 1_956_528_000;

fn vector(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testvectors/snp")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn report(name: &str) -> Vec<u8> {
    let raw = vector(name);
    if name.ends_with(".hex") {
        let text: String = String::from_utf8(raw)
            .unwrap()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        hex::decode(text).unwrap()
    } else {
        raw
    }
}

fn check(rep: &[u8], vcek: &str, policy: &Policy, now: u64) -> Result<Claims, Rejection> {
    let e = Endorsements::default().with_snp_vcek(vector(vcek));
    verify(
        &Evidence {
            format: Format::Snp,
            bytes: rep,
        },
        &e,
        policy,
        None,
        now,
    )
}

#[test]
fn both_milan_samples_are_accepted_today_and_not_after_their_vcek_expires() {
    for (rep, vcek) in [
        ("report_milan.hex", "vcek_milan.der"),
        ("trustee-report.bin", "trustee-vcek.der"),
    ] {
        let r = report(rep);
        let c = check(&r, vcek, &Policy::default(), TODAY).unwrap_or_else(|e| panic!("{rep}: {e}"));
        assert_eq!(c.versions["vmpl"], 0, "{rep}");
        assert!(!c.debug);
        assert_eq!(c.measurements["measurement"].len(), 96);
        let later = check(&r, vcek, &Policy::default(), YEAR_2032);
        assert!(
            matches!(later, Err(Rejection::NotAuthentic(ref m)) if m.contains("not valid")),
            "{later:?}"
        );
    }
}

#[test]
fn a_vcek_that_does_not_chain_or_belongs_to_another_chip_is_rejected() {
    let r = report("report_milan.hex");
    let e = check(&r, "vcek-invalid.der", &Policy::default(), TODAY).unwrap_err();
    assert!(
        matches!(e, Rejection::NotAuthentic(ref m) if m.contains("chain")),
        "{e}"
    );
    // A genuine VCEK of another chip does not verify this report's signature.
    assert!(matches!(
        check(&r, "trustee-vcek.der", &Policy::default(), TODAY),
        Err(Rejection::NotAuthentic(_))
    ));
    let none = Endorsements::default();
    let r2 = verify(
        &Evidence {
            format: Format::Snp,
            bytes: &r,
        },
        &none,
        &Policy::default(),
        None,
        TODAY,
    );
    assert!(matches!(r2, Err(Rejection::MissingEndorsement(_))));
}

#[test]
fn a_flipped_byte_anywhere_in_either_sample_is_rejected() {
    // The signature covers bytes 0x000..0x2A0; the signature itself is at 0x2A0..0x4A0
    // (R and S, 72 bytes each, then reserved bytes that must stay zero).
    for (name, vcek) in [
        ("report_milan.hex", "vcek_milan.der"),
        ("trustee-report.bin", "trustee-vcek.der"),
    ] {
        let r = report(name);
        assert_eq!(r.len(), 0x4A0, "{name}");
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        let mut in_signature = 0;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pos = (x % r.len() as u64) as usize;
            in_signature += usize::from(pos >= 0x2A0);
            let mut bad = r.clone();
            bad[pos] ^= 1 << (x >> 61);
            assert!(
                check(&bad, vcek, &Policy::default(), TODAY).is_err(),
                "{name}: flip at {pos:#x} accepted"
            );
        }
        assert!(
            in_signature > 50,
            "{name}: {in_signature} flips in the signature"
        );
        for cut in [0, 100, r.len() - 1] {
            assert!(matches!(
                check(&r[..cut], vcek, &Policy::default(), TODAY),
                Err(Rejection::Malformed { .. })
            ));
        }
    }
}

#[test]
fn policy_pins_the_measurement_and_vmpl() {
    let r = report("report_milan.hex");
    let c = check(&r, "vcek_milan.der", &Policy::default(), TODAY).unwrap();
    let pinned = Policy::from_toml(&format!(
        "formats = [\"snp\"]\n[measurements]\nmeasurement = [\"{}\"]\n[versions]\nvmpl = 0\n",
        c.measurements["measurement"]
    ))
    .unwrap();
    check(&r, "vcek_milan.der", &pinned, TODAY).unwrap();
    // A status list applies only to evidence that has a TCB status (DCAP), not to SNP.
    let dcap_statuses = Policy::from_toml("allowed_tcb_statuses = [\"UpToDate\"]\n").unwrap();
    check(&r, "vcek_milan.der", &dcap_statuses, TODAY).unwrap();
    // An empty list of formats allows none (absent would allow all).
    let none = Policy::from_toml("formats = []\n").unwrap();
    assert!(matches!(
        check(&r, "vcek_milan.der", &none, TODAY),
        Err(Rejection::Policy(_))
    ));
    let wrong = Policy::from_toml("[versions]\nvmpl = 1\n").unwrap();
    assert!(matches!(
        check(&r, "vcek_milan.der", &wrong, TODAY),
        Err(Rejection::Policy(_))
    ));
}

#[test]
fn policy_pins_host_data_guest_policy_and_a_maximum_vmpl() {
    let r = report("report_milan.hex");
    let c = check(&r, "vcek_milan.der", &Policy::default(), TODAY).unwrap();
    let guest_policy = c.versions["policy"];
    let host_data = c.measurements["host_data"].clone();
    let with = |toml: &str| {
        let p = Policy::from_toml(toml).unwrap();
        check(&r, "vcek_milan.der", &p, TODAY)
    };
    with(&format!(
        "[measurements]\nhost_data = [\"{host_data}\"]\n[versions]\npolicy = {guest_policy}\n\
         [max_versions]\nvmpl = 0\n"
    ))
    .unwrap();
    let last = if host_data.ends_with('0') { '1' } else { '0' };
    let other_host = format!("{}{last}", &host_data[..host_data.len() - 1]);
    let refusals = [
        (
            format!("[measurements]\nhost_data = [\"{other_host}\"]\n"),
            "not a reference value",
        ),
        (
            format!("[versions]\npolicy = {}\n", guest_policy ^ 1 << 16),
            "the policy requires",
        ),
        (
            format!(
                "[max_versions]\ntcb_microcode = {}\n",
                c.versions["tcb_microcode"] - 1
            ),
            "the policy's maximum is",
        ),
        (
            "[max_versions]\nno_such_claim = 0\n".to_string(),
            "has no no_such_claim",
        ),
    ];
    for (toml, why) in &refusals {
        let e = with(toml).unwrap_err();
        assert!(
            matches!(e, Rejection::Policy(ref m) if m.contains(why)),
            "{toml}: {e}"
        );
    }
}

#[test]
fn vlek_and_unsigned_reports_are_named_as_such() {
    let rep = report("report_milan.hex");
    let ok = check(&rep, "vcek_milan.der", &Policy::default(), TODAY).unwrap();
    assert_eq!(ok.measurements["chip_id"].len(), 128);
    // KEY_INFO at offset 0x48: bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY (1 = VLEK).
    for (bits, expect) in [
        (0x04u8, "VLEK"),
        (0x02, "not signed"),
        (0x08, "signing key 2"),
    ] {
        let mut r = rep.clone();
        r[0x48] |= bits;
        let e = check(&r, "vcek_milan.der", &Policy::default(), TODAY).unwrap_err();
        assert!(
            matches!(e, Rejection::NotAuthentic(ref m) if m.contains(expect)),
            "{bits:#x}: {e}"
        );
    }
}

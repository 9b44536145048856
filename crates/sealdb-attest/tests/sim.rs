//! `sim-v1` evidence: made by the simulated platform, accepted only when the policy allows
//! simulation, bound to its measurement and report_data.

use sealdb_attest::sim::{measure, SimPlatform, EVIDENCE_LEN};
use sealdb_attest::{verify, Claims, Endorsements, Evidence, Format, Policy, Rejection};

const NOW: u64 = 1_796_342_400;

fn check(
    bytes: &[u8],
    e: &Endorsements,
    policy: &Policy,
    rd: Option<&[u8]>,
) -> Result<Claims, Rejection> {
    verify(
        &Evidence {
            format: Format::Sim,
            bytes,
        },
        e,
        policy,
        rd,
        NOW,
    )
}

fn allow() -> Policy {
    Policy::from_toml("allow_insecure_simulation = true\n").unwrap()
}

fn sample() -> (SimPlatform, [u8; 48], [u8; 64], Vec<u8>) {
    let platform = SimPlatform::generate().unwrap();
    let measurement = measure(b"the vault binary");
    let mut rd = [0u8; 64];
    rd[..5].copy_from_slice(b"nonce");
    let ev = platform.evidence(&measurement, &rd);
    (platform, measurement, rd, ev)
}

#[test]
fn accepted_only_when_the_policy_allows_simulation() {
    let (platform, measurement, rd, ev) = sample();
    assert_eq!(ev.len(), EVIDENCE_LEN);
    let none = Endorsements::default();
    let r = check(&ev, &none, &Policy::default(), None);
    assert!(
        matches!(r, Err(Rejection::Policy(ref m)) if m.contains("not allowed")),
        "{r:?}"
    );
    // Listing the format is not enough: simulation must be allowed by name.
    let listed = Policy::from_toml("formats = [\"sim\"]\n").unwrap();
    assert!(matches!(
        check(&ev, &none, &listed, None),
        Err(Rejection::Policy(_))
    ));
    let c = check(&ev, &none, &allow(), Some(&rd)).unwrap();
    assert!(c.debug);
    assert_eq!(c.format, Format::Sim);
    assert_eq!(c.measurements["sim_measurement"], hex::encode(measurement));
    assert_eq!(
        c.measurements["sim_platform_key"],
        hex::encode(platform.public_key())
    );
    assert_eq!(c.report_data, hex::encode(rd));
    assert_eq!(c.tcb_status, "NotApplicable");
}

#[test]
fn measurement_report_data_and_platform_key_are_bound() {
    let (platform, measurement, rd, ev) = sample();
    let none = Endorsements::default();
    // A pinned measurement refuses another binary.
    let pinned = Policy::from_toml(&format!(
        "allow_insecure_simulation = true\n[measurements]\nsim_measurement = [\"{}\"]\n",
        hex::encode(measurement)
    ))
    .unwrap();
    check(&ev, &none, &pinned, None).unwrap();
    let other = platform.evidence(&measure(b"a changed vault binary"), &rd);
    assert!(matches!(
        check(&other, &none, &pinned, None),
        Err(Rejection::Policy(_))
    ));
    // Another session's report_data.
    assert_eq!(
        check(&ev, &none, &allow(), Some(b"other nonce")).unwrap_err(),
        Rejection::ReportDataMismatch
    );
    // A pinned platform key refuses evidence of another simulated platform.
    let pin = Endorsements::default().with_sim_platform_key(platform.public_key());
    check(&ev, &pin, &allow(), None).unwrap();
    let (_, _, _, foreign) = sample();
    assert!(matches!(
        check(&foreign, &pin, &allow(), None),
        Err(Rejection::NotAuthentic(_))
    ));
}

#[test]
fn every_flipped_byte_is_rejected() {
    let (_, _, _, ev) = sample();
    let none = Endorsements::default();
    for i in 0..ev.len() {
        let mut bad = ev.clone();
        bad[i] ^= 0x01;
        let r = check(&bad, &none, &allow(), None);
        assert!(
            matches!(
                r,
                Err(Rejection::Malformed { .. } | Rejection::NotAuthentic(_))
            ),
            "byte {i}: {r:?}"
        );
    }
    for len in [0, 1, 8, EVIDENCE_LEN - 1, EVIDENCE_LEN + 1] {
        let mut b = ev.clone();
        b.resize(len, 0);
        assert!(matches!(
            check(&b, &none, &allow(), None),
            Err(Rejection::Malformed { .. })
        ));
    }
}

#[test]
fn the_same_seed_gives_the_same_platform() {
    let a = SimPlatform::from_seed(&[7u8; 32]).unwrap();
    let b = SimPlatform::from_seed(&[7u8; 32]).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    assert!(SimPlatform::from_seed(&[7u8; 16]).is_err());
}

/// Evidence made by an independent implementation (Python `cryptography`, from the layout in
/// `sim.rs` and docs/attestation.md) with seed 0x42 × 32, measurement SHA-384("sealdb-vault
/// test binary") and report_data 00 01 … 3f: the format is what the documentation says.
#[test]
fn evidence_from_an_independent_implementation_verifies() {
    let ev = hex::decode(concat!(
        "5345414c53494d31010001002152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881",
        "db12ec3b2e2559265d508b26813298d5ce3f1a1e38c0023df3c8b9faccdfa40ebb304efc5d7c11fef388",
        "2431e6165ad7d78a000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021",
        "22232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f03f853e20297a04dfc7f0af7",
        "4c9c6dde7fcfb5c20b1bb148cb2a7263a63b815524e1f354c5cc69642fa24b16c0c59c5cf5acf3931541",
        "b56e271fa684b1154f09",
    ))
    .unwrap();
    let rd: Vec<u8> = (0u8..64).collect();
    let c = check(&ev, &Endorsements::default(), &allow(), Some(&rd)).unwrap();
    assert_eq!(
        c.measurements["sim_measurement"],
        hex::encode(measure(b"sealdb-vault test binary"))
    );
    let platform = SimPlatform::from_seed(&[0x42; 32]).unwrap();
    assert_eq!(
        c.measurements["sim_platform_key"],
        "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12"
    );
    // Ed25519 is deterministic: our producer makes the same bytes from the same inputs.
    let rd: [u8; 64] = rd.try_into().unwrap();
    assert_eq!(
        platform.evidence(&measure(b"sealdb-vault test binary"), &rd),
        ev
    );
}

/// Allowing simulation accepts sim's debug flag, never a real TEE's.
#[test]
fn allowing_simulation_does_not_admit_debug_hardware_evidence() {
    let quote = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/testvectors/dcap/tdx_quote_debug_td.dat"),
    )
    .unwrap();
    let r = verify(
        &Evidence {
            format: Format::Tdx,
            bytes: &quote,
        },
        &Endorsements::default(),
        &allow(),
        None,
        NOW,
    );
    assert_eq!(r.unwrap_err(), Rejection::Debug);
}

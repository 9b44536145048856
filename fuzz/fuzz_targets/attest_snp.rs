#![no_main]
//! An AMD SEV-SNP report (and, after the first 1184 bytes, a VCEK) through the verifier:
//! must never panic.
use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (report, vcek) = data.split_at(data.len().min(1184));
    let e = Endorsements::default().with_snp_vcek(vcek.to_vec());
    let policy = Policy { allow_debug: true, ..Policy::default() };
    let _ = verify(&Evidence { format: Format::Snp, bytes: report }, &e, &policy, None, 1_796_342_400);
});

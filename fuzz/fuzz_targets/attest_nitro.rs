#![no_main]
//! An AWS Nitro attestation document through the verifier: must never panic.
use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let policy = Policy { allow_debug: true, ..Policy::default() };
    let ev = Evidence { format: Format::Nitro, bytes: data };
    let _ = verify(&ev, &Endorsements::default(), &policy, None, 1_736_179_625);
});

#![no_main]
//! `sim-v1` evidence through the verifier: must never panic.
use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let policy = Policy { allow_insecure_simulation: true, ..Policy::default() };
    let ev = Evidence { format: Format::Sim, bytes: data };
    let _ = verify(&ev, &Endorsements::default(), &policy, Some(b"nonce"), 1_796_342_400);
});

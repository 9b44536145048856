#![no_main]
//! Collateral responses (PCS/PCCS JSON and CRLs, KDS certificates) and cache entries: the
//! decoders must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdb_collateral::fuzzing::decoders(data);
});

#![no_main]
//! Owner/vault wire frames and peer certificates: the decoders must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdb_vault_proto::fuzzing::frames(data);
});

#![no_main]
//! Replaces one file of a small store (WAL, table, manifest or value log, chosen by the first byte) with
//! the input, then opens, reads, scans and verifies it: must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let suffix = [".wal", ".sst", "MANIFEST", ".vlog"][usize::from(which % 4)];
    sealdb::fuzzing::open_store_with_file(suffix, rest);
});

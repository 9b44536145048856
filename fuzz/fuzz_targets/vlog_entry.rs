#![no_main]
//! Fuzzes `sealdb::fuzzing::decode_vlog_entry`: must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb::fuzzing::decode_vlog_entry(data));

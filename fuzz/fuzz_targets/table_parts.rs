#![no_main]
//! Fuzzes `sealdb::fuzzing::decode_table_parts`: must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb::fuzzing::decode_table_parts(data));

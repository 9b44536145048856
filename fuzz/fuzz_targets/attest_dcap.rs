#![no_main]
//! An Intel DCAP quote (SGX or TDX, chosen by the first byte) through the verifier, with
//! debug allowed so parsing goes as far as it can without collateral: must never panic.
use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let format = if which & 1 == 0 { Format::Sgx } else { Format::Tdx };
    let policy = Policy { allow_debug: true, ..Policy::default() };
    let _ = verify(&Evidence { format, bytes }, &Endorsements::default(), &policy, None, 1_750_377_600);
});

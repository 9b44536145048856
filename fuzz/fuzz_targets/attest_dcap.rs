#![no_main]
//! An Intel DCAP quote through the verifier, with debug allowed so that checking goes as far
//! as it can: must never panic. The first byte chooses: bit 0 SGX or TDX; bit 1 set, the next
//! two bytes (big-endian) are the quote's length and the rest is collateral JSON (the
//! `--collateral` file, `Endorsements::dcap_collateral_json`), so the collateral parser,
//! the PCK chain in the quote and the collateral checks are reached too (`seeds.sh` makes
//! such inputs from the real samples); bit 1 clear, the rest is the quote alone.
use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let format = if which & 1 == 0 { Format::Sgx } else { Format::Tdx };
    let (quote, endorsements) = if which & 2 == 0 {
        (rest, Endorsements::default())
    } else {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
        let (quote, json) = rest.split_at(usize::from(u16::from_be_bytes(*len)).min(rest.len()));
        let Ok(json) = std::str::from_utf8(json) else { return };
        match Endorsements::dcap_collateral_json(json) {
            Ok(e) => (quote, e),
            Err(_) => return,
        }
    };
    let policy = Policy { allow_debug: true, ..Policy::default() };
    let _ = verify(&Evidence { format, bytes: quote }, &endorsements, &policy, None, 1_750_377_600);
});

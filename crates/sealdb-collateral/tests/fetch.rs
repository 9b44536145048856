//! Fetching collateral from a local HTTP server that serves the real collateral of
//! `../shared/testvectors` the way Intel PCS/PCCS and AMD KDS do, through the on-disk cache.

#[path = "support/pccs.rs"]
mod pccs;

use std::net::TcpListener;

use pccs::{serve_dcap, vector, Server};

use sealdb_attest::{verify, Endorsements, Evidence, Format, Policy};
use sealdb_collateral::{Cache, FetchError, Fetcher, SnpProduct};

const SGX_REF: u64 = 1_750_377_600;
const DAY: u64 = 86_400;

fn verify_with(format: Format, quote: &[u8], json: &str) -> sealdb_attest::Claims {
    verify(
        &Evidence {
            format,
            bytes: quote,
        },
        &Endorsements::dcap_collateral_json(json).unwrap(),
        &Policy::default(),
        None,
        SGX_REF,
    )
    .unwrap()
}

/// A local PCCS serving the SGX sample's collateral (its PCK certificate says FMSPC
/// 00A067110000, processor CA), a fetcher with a cache in a fresh directory, and the quote.
fn sgx_sample_through_a_cached_pccs() -> (Server, tempfile::TempDir, Fetcher, Vec<u8>) {
    let server = Server::start();
    serve_dcap(
        &server,
        "sgx_quote_collateral.json",
        "sgx",
        "00A067110000",
        "processor",
    );
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new()
        .with_pccs(&server.base)
        .with_cache(Cache::open(dir.path()).unwrap());
    (server, dir, fetcher, vector("dcap/sgx_quote"))
}

#[test]
fn dcap_collateral_from_a_pccs_verifies_like_the_file_and_is_cached() {
    let (server, dir, fetcher, quote) = sgx_sample_through_a_cached_pccs();

    let got = fetcher.dcap_collateral(&quote, SGX_REF).unwrap();
    assert_eq!((got.fetched, got.from_cache), (4, 0));
    let mut requests = server.take_requests();
    requests.sort();
    assert_eq!(
        requests,
        [
            "/sgx/certification/v4/pckcrl?ca=processor&encoding=der",
            "/sgx/certification/v4/qe/identity",
            "/sgx/certification/v4/rootcacrl",
            "/sgx/certification/v4/tcb?fmspc=00A067110000",
        ]
    );
    // The fetched collateral verifies exactly like the file: same claims, same digests.
    let file = String::from_utf8(vector("dcap/sgx_quote_collateral.json")).unwrap();
    let from_fetch = verify_with(Format::Sgx, &quote, &got.value);
    let from_file = verify_with(Format::Sgx, &quote, &file);
    assert_eq!(from_fetch, from_file);
    assert_eq!(from_fetch.tcb_status, "ConfigurationAndSWHardeningNeeded");

    // A second fetch is served from the cache without a request.
    let again = fetcher.dcap_collateral(&quote, SGX_REF + 60).unwrap();
    assert_eq!((again.fetched, again.from_cache), (0, 4));
    assert_eq!(again.value, got.value);
    assert!(server.take_requests().is_empty());

    // After the maximum age (one day by default) everything is fetched again.
    let later = fetcher.dcap_collateral(&quote, SGX_REF + DAY + 1).unwrap();
    assert_eq!((later.fetched, later.from_cache), (4, 0));
    assert_eq!(server.take_requests().len(), 4);

    // An offline cache serves what it holds, and names what it lacks.
    let offline = Fetcher::new()
        .with_pccs(&server.base)
        .with_cache(Cache::open(dir.path()).unwrap().offline());
    let o = offline.dcap_collateral(&quote, SGX_REF + DAY + 2).unwrap();
    assert_eq!((o.fetched, o.from_cache), (0, 4));
    let empty = tempfile::tempdir().unwrap();
    let none = Fetcher::new()
        .with_pccs(&server.base)
        .with_cache(Cache::open(empty.path()).unwrap().offline());
    let e = none.dcap_collateral(&quote, SGX_REF).unwrap_err();
    assert!(
        matches!(e, FetchError::NotCached { ref url } if url.contains("pckcrl")),
        "{e}"
    );
    assert!(server.take_requests().is_empty());
}

#[test]
fn a_corrupt_cache_entry_is_replaced_and_reported() {
    let (_server, dir, fetcher, quote) = sgx_sample_through_a_cached_pccs();
    let first = fetcher.dcap_collateral(&quote, SGX_REF).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);
    std::fs::write(&files[0], b"{\"format\": 1").unwrap();
    let again = fetcher.dcap_collateral(&quote, SGX_REF).unwrap();
    assert_eq!((again.fetched, again.from_cache), (1, 3));
    assert_eq!(again.warnings.len(), 1, "{:?}", again.warnings);
    assert!(again.warnings[0].contains(&files[0].display().to_string()));
    assert_eq!(again.value, first.value);
    // The entry was rewritten: the next fetch is all from the cache.
    let third = fetcher.dcap_collateral(&quote, SGX_REF).unwrap();
    assert_eq!((third.fetched, third.from_cache), (0, 4));
}

#[test]
fn tdx_collateral_from_pcs_paths_verifies() {
    let server = Server::start();
    let quote = vector("dcap/tdx_quote");
    let c: serde_json::Value =
        serde_json::from_slice(&vector("dcap/tdx_quote_collateral.json")).unwrap();
    let tcb: serde_json::Value = serde_json::from_str(c["tcb_info"].as_str().unwrap()).unwrap();
    let fmspc = tcb["fmspc"].as_str().unwrap().to_uppercase();
    serve_dcap(
        &server,
        "tdx_quote_collateral.json",
        "tdx",
        &fmspc,
        "platform",
    );
    serve_dcap(
        &server,
        "tdx_quote_collateral.json",
        "tdx",
        &fmspc,
        "processor",
    );
    // PCS mode: the root CA CRL comes from its own URL, as DER.
    let root = hex::decode(c["root_ca_crl"].as_str().unwrap()).unwrap();
    server.route("/IntelSGXRootCA.der", 200, &[], root);
    let fetcher = Fetcher::new()
        .with_pcs(&format!("{}/sgx/certification/v4/", server.base))
        .with_root_ca_crl_url(&format!("{}/IntelSGXRootCA.der", server.base));
    let got = fetcher.dcap_collateral(&quote, SGX_REF).unwrap();
    assert_eq!(got.fetched, 4);
    let mut requests = server.take_requests();
    requests.sort();
    assert_eq!(
        requests,
        [
            "/IntelSGXRootCA.der".to_string(),
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der".to_string(),
            "/tdx/certification/v4/qe/identity".to_string(),
            format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
        ]
    );
    let file = String::from_utf8(vector("dcap/tdx_quote_collateral.json")).unwrap();
    assert_eq!(
        verify_with(Format::Tdx, &quote, &got.value),
        verify_with(Format::Tdx, &quote, &file)
    );
}

#[test]
fn service_errors_name_the_url_and_what_is_wrong() {
    let server = Server::start();
    let quote = vector("dcap/sgx_quote");
    let fetcher = Fetcher::new().with_pccs(&server.base);
    // Nothing served: the first request's status.
    let e = fetcher.dcap_collateral(&quote, SGX_REF).unwrap_err();
    assert!(
        matches!(e, FetchError::Status { status: 404, ref url } if url.contains("pckcrl")),
        "{e}"
    );
    // A response without its issuer chain header.
    server.route(
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der",
        200,
        &[],
        b"crl".to_vec(),
    );
    let e = fetcher.dcap_collateral(&quote, SGX_REF).unwrap_err();
    assert!(
        e.to_string()
            .contains("missing header SGX-PCK-CRL-Issuer-Chain"),
        "{e}"
    );
    // Not a quote at all.
    let e = fetcher
        .dcap_collateral(b"not a quote", SGX_REF)
        .unwrap_err();
    assert!(matches!(e, FetchError::Evidence(_)), "{e}");
    // Nobody listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let e = Fetcher::new()
        .with_pccs(&closed)
        .dcap_collateral(&quote, SGX_REF)
        .unwrap_err();
    assert!(matches!(e, FetchError::Transport { .. }), "{e}");
}

#[test]
fn snp_vcek_from_kds_verifies_the_report_and_is_kept_until_it_expires() {
    let server = Server::start();
    let report = hex::decode(
        String::from_utf8(vector("snp/report_milan.hex"))
            .unwrap()
            .split_whitespace()
            .collect::<String>(),
    )
    .unwrap();
    let vcek = vector("snp/vcek_milan.der");
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new()
        .with_kds(&server.base)
        .with_cache(Cache::open(dir.path()).unwrap());
    // A version 2 report does not name its processor.
    let e = fetcher.snp_vcek(&report, None, SGX_REF).unwrap_err();
    assert!(e.to_string().contains("does not name its processor"), "{e}");
    // Learn the URL the fetcher asks for, then serve the VCEK there.
    let e = fetcher
        .snp_vcek(&report, Some(SnpProduct::Milan), SGX_REF)
        .unwrap_err();
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
    let target = server.take_requests().pop().unwrap();
    assert!(target.starts_with("/vcek/v1/Milan/"), "{target}");
    let (path, query) = target.split_once('?').unwrap();
    assert_eq!(path.len(), "/vcek/v1/Milan/".len() + 128, "{path}");
    assert!(
        query.starts_with("blSPL=") && query.contains("&teeSPL=") && query.contains("&ucodeSPL="),
        "{query}"
    );
    server.route(&target, 200, &[], vcek.clone());
    let got = fetcher
        .snp_vcek(&report, Some(SnpProduct::Milan), SGX_REF)
        .unwrap();
    assert_eq!(got.value, vcek);
    assert_eq!(server.take_requests(), [target]);
    // The fetched VCEK verifies the report (at a time its certificates are valid).
    let claims = verify(
        &Evidence {
            format: Format::Snp,
            bytes: &report,
        },
        &Endorsements::default().with_snp_vcek(got.value),
        &Policy::default(),
        None,
        SGX_REF,
    )
    .unwrap();
    assert_eq!(claims.format, Format::Snp);
    // Kept past the default maximum age: a VCEK does not change for the same chip and TCB.
    let later = fetcher
        .snp_vcek(&report, Some(SnpProduct::Milan), SGX_REF + 30 * DAY)
        .unwrap();
    assert_eq!((later.fetched, later.from_cache), (0, 1));
    assert!(server.take_requests().is_empty());
}

fn milan_report() -> Vec<u8> {
    hex::decode(
        String::from_utf8(vector("snp/report_milan.hex"))
            .unwrap()
            .split_whitespace()
            .collect::<String>(),
    )
    .unwrap()
}

/// Serves `vcek` where the fetcher asks for the Milan sample's VCEK; returns that path.
fn serve_vcek(server: &Server, fetcher: &Fetcher, vcek: Vec<u8>) -> String {
    let _ = fetcher.snp_vcek(&milan_report(), Some(SnpProduct::Milan), SGX_REF);
    let target = server.take_requests().pop().unwrap();
    server.route(&target, 200, &[], vcek);
    target
}

#[test]
fn collateral_that_does_not_verify_is_not_cached() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new()
        .with_kds(&server.base)
        .with_cache(Cache::open(dir.path()).unwrap());
    serve_vcek(&server, &fetcher, vector("snp/vcek-invalid.der"));
    for _ in 0..2 {
        let got = fetcher
            .snp_vcek(&milan_report(), Some(SnpProduct::Milan), SGX_REF)
            .unwrap();
        assert_eq!((got.fetched, got.from_cache), (1, 0));
        assert!(
            got.warnings[0].contains("does not verify the report"),
            "{:?}",
            got.warnings
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A DCAP response without its issuer chain fails the fetch and leaves nothing behind.
    serve_dcap(
        &server,
        "sgx_quote_collateral.json",
        "sgx",
        "00A067110000",
        "processor",
    );
    server.route(
        "/sgx/certification/v4/qe/identity",
        200,
        &[],
        b"{}".to_vec(),
    );
    let dcap = Fetcher::new()
        .with_pccs(&server.base)
        .with_cache(Cache::open(dir.path()).unwrap());
    let e = dcap
        .dcap_collateral(&vector("dcap/sgx_quote"), SGX_REF)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("missing header SGX-Enclave-Identity-Issuer-Chain"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_lowered_maximum_age_applies_to_what_is_already_cached_and_a_vcek_expires() {
    let server = Server::start();
    serve_dcap(
        &server,
        "sgx_quote_collateral.json",
        "sgx",
        "00A067110000",
        "processor",
    );
    let dir = tempfile::tempdir().unwrap();
    let quote = vector("dcap/sgx_quote");
    let fetcher = |max_age: u64| {
        Fetcher::new()
            .with_pccs(&server.base)
            .with_kds(&server.base)
            .with_max_age(max_age)
            .with_cache(Cache::open(dir.path()).unwrap())
    };
    assert_eq!(
        fetcher(DAY)
            .dcap_collateral(&quote, SGX_REF)
            .unwrap()
            .fetched,
        4
    );
    assert_eq!(
        fetcher(DAY)
            .dcap_collateral(&quote, SGX_REF + 60)
            .unwrap()
            .from_cache,
        4
    );
    assert_eq!(
        fetcher(30)
            .dcap_collateral(&quote, SGX_REF + 60)
            .unwrap()
            .fetched,
        4
    );
    // The VCEK is kept past any maximum age, but not past its own expiry (2030-04-03).
    serve_vcek(&server, &fetcher(DAY), vector("snp/vcek_milan.der"));
    let f = fetcher(30);
    let rep = milan_report();
    let first = f.snp_vcek(&rep, Some(SnpProduct::Milan), SGX_REF).unwrap();
    assert_eq!(first.fetched, 1, "{:?}", (first.from_cache, first.warnings));
    let next_year = SGX_REF + 365 * DAY;
    assert_eq!(
        f.snp_vcek(&rep, Some(SnpProduct::Milan), next_year)
            .unwrap()
            .from_cache,
        1
    );
    let after_expiry = 1_920_000_000; // 2030-11-04
    assert_eq!(
        f.snp_vcek(&rep, Some(SnpProduct::Milan), after_expiry)
            .unwrap()
            .fetched,
        1
    );
}

#[test]
fn only_https_or_local_http_without_credentials_is_used() {
    let quote = vector("dcap/sgx_quote");
    for url in [
        "http://pccs.example.com:8081",
        "ftp://pccs.example.com",
        "https://user:secret@pccs.example.com",
        "pccs.example.com",
    ] {
        let e = Fetcher::new()
            .with_pccs(url)
            .dcap_collateral(&quote, SGX_REF)
            .unwrap_err();
        assert!(matches!(e, FetchError::InsecureUrl { .. }), "{url}: {e}");
        assert!(
            !e.to_string().contains("secret")
                || url.contains("secret") && e.to_string().contains("credentials")
        );
    }
}

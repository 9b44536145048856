//! The `sealdb` command as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn sealdb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sealdb"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = sealdb(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn encrypted_store_round_trip_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("master.key");
    let dir = tmp.path().join("db");
    let (key, dir) = (p(&key), p(&dir));
    ok(&["keygen", "--out", key]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::metadata(key).unwrap().len(), 32);
    assert!(
        !sealdb(&["keygen", "--out", key]).status.success(),
        "keygen must not overwrite"
    );
    ok(&["init", "--dir", dir, "--key-file", key]);
    ok(&["put", "--dir", dir, "--key-file", key, "user/1", "ada"]);
    ok(&[
        "put",
        "--dir",
        dir,
        "--key-file",
        key,
        "--hex",
        "00ff",
        "beef",
    ]);
    assert_eq!(
        ok(&["get", "--dir", dir, "--key-file", key, "user/1"]),
        "ada\n"
    );
    assert_eq!(
        ok(&["get", "--dir", dir, "--key-file", key, "--hex", "00ff"]),
        "beef\n"
    );

    let missing = sealdb(&["get", "--dir", dir, "--key-file", key, "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&missing.stderr), "not found\n");

    let tsv = tmp.path().join("data.tsv");
    std::fs::write(&tsv, "user/2\tgrace\nuser/3\tbarbara\nother\tx\n").unwrap();
    assert_eq!(
        ok(&["load", "--dir", dir, "--key-file", key, "--tsv", p(&tsv)]),
        "loaded 3 entries\n"
    );
    assert_eq!(
        ok(&["scan", "--dir", dir, "--key-file", key, "--prefix", "user/"]),
        "user/1\tada\nuser/2\tgrace\nuser/3\tbarbara\n"
    );
    assert_eq!(
        ok(&[
            "scan",
            "--dir",
            dir,
            "--key-file",
            key,
            "--prefix",
            "user/",
            "--reverse"
        ]),
        "user/3\tbarbara\nuser/2\tgrace\nuser/1\tada\n"
    );
    ok(&["delete", "--dir", dir, "--key-file", key, "user/2"]);
    assert_eq!(
        sealdb(&["get", "--dir", dir, "--key-file", key, "user/2"])
            .status
            .code(),
        Some(1)
    );
    assert!(ok(&["verify", "--dir", dir, "--key-file", key]).starts_with("ok:"));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--dir", dir, "--key-file", key, "--json"])).unwrap();
    assert_eq!(info["encrypted"], true);
    assert_eq!(info["key_ids_in_use"], serde_json::json!([1]));

    // Without the key, or with another, nothing opens.
    let no_key = sealdb(&["get", "--dir", dir, "user/1"]);
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("master key is required"));
    let other = tmp.path().join("other.key");
    ok(&["keygen", "--out", p(&other)]);
    let wrong = sealdb(&["get", "--dir", dir, "--key-file", p(&other), "user/1"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong master key"));

    // A flipped byte in a table: verify fails and names the file and offset.
    let table = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .unwrap();
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&table, bytes).unwrap();
    let bad = sealdb(&["verify", "--dir", dir, "--key-file", key]);
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stderr);
    let name = table.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name) && msg.contains("offset"), "{msg}");
}

#[test]
fn bench_prints_one_line_in_the_peers_format() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&[
        "bench",
        "--dir",
        p(&tmp.path().join("b")),
        "--n",
        "5000",
        "--value-size",
        "50",
        "--reads",
        "1000",
        "--encryption",
        "host",
    ]);
    let line = out.trim_end();
    assert_eq!(out.lines().count(), 1);
    assert!(
        line.starts_with("engine=sealdb enc=host n=5000 vsz=50 fill_ops_s="),
        "{line}"
    );
    assert!(line.ends_with("scanned=5000"), "{line}");
}

#[test]
fn demo_runs() {
    let out = ok(&["demo"]);
    assert!(out.contains("not found on disk"));
    assert!(out.contains("wrong key is refused"));
}

#[test]
fn key_management_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, new_key, dir) = (
        tmp.path().join("k1"),
        tmp.path().join("k2"),
        tmp.path().join("db"),
    );
    let (key, new_key, dir) = (p(&key), p(&new_key), p(&dir));
    ok(&["keygen", "--out", key]);
    ok(&["keygen", "--out", new_key]);
    ok(&["init", "--dir", dir, "--key-file", key]);
    let tsv = tmp.path().join("d.tsv");
    std::fs::write(
        &tsv,
        (0..500)
            .map(|i| format!("k{i}\tv{i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    ok(&["load", "--dir", dir, "--key-file", key, "--tsv", p(&tsv)]);
    assert!(
        ok(&["keys", "rotate", "--dir", dir, "--key-file", key]).contains("new active data key: 2")
    );
    let out = ok(&[
        "keys",
        "rekey",
        "--dir",
        dir,
        "--key-file",
        key,
        "--max-age",
        "0",
    ]);
    assert!(
        out.contains("keys in use: [2]") || out.contains("keys in use: [3]"),
        "{out}"
    );
    let list: serde_json::Value = serde_json::from_str(&ok(&[
        "keys",
        "list",
        "--dir",
        dir,
        "--key-file",
        key,
        "--json",
    ]))
    .unwrap();
    assert_eq!(list["keys"][0]["state"], "retired");
    assert!(ok(&["info", "--dir", dir, "--key-file", key]).contains("oldest key in use"));
    ok(&[
        "keys",
        "rotate-master",
        "--dir",
        dir,
        "--key-file",
        key,
        "--new-key-file",
        new_key,
    ]);
    let old = sealdb(&["get", "--dir", dir, "--key-file", key, "k7"]);
    assert!(String::from_utf8_lossy(&old.stderr).contains("wrong master key"));
    assert_eq!(
        ok(&["get", "--dir", dir, "--key-file", new_key, "k7"]),
        "v7\n"
    );
    assert!(ok(&["verify", "--dir", dir, "--key-file", new_key]).starts_with("ok:"));
}

#[test]
fn value_log_gc_and_info_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, dir) = (tmp.path().join("k"), tmp.path().join("db"));
    let (key, dir) = (p(&key), p(&dir));
    ok(&["keygen", "--out", key]);
    ok(&["init", "--dir", dir, "--key-file", key]);
    let big = "x".repeat(3000);
    for round in 0..3 {
        let tsv = tmp.path().join(format!("r{round}.tsv"));
        std::fs::write(
            &tsv,
            (0..200)
                .map(|i| format!("k{i}\t{big}{round}\n"))
                .collect::<String>(),
        )
        .unwrap();
        ok(&["load", "--dir", dir, "--key-file", key, "--tsv", p(&tsv)]);
    }
    ok(&["flatten", "--dir", dir, "--key-file", key]);
    let before: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--dir", dir, "--key-file", key, "--json"])).unwrap();
    let discardable: u64 = before["value_log_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["discardable_bytes"].as_u64().unwrap())
        .sum();
    assert!(discardable > 0, "{before}");
    let out = ok(&["gc", "--dir", dir, "--key-file", key, "--ratio", "0.3"]);
    assert!(out.starts_with("collected "), "{out}");
    assert_eq!(
        ok(&["get", "--dir", dir, "--key-file", key, "k7"]),
        format!("{big}2\n")
    );
    assert!(ok(&["verify", "--dir", dir, "--key-file", key]).starts_with("ok:"));
}

#[test]
fn attest_verify_prints_claims_or_the_reason() {
    let t =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testvectors/dcap");
    let (quote, coll) = (t.join("sgx_quote"), t.join("sgx_quote_collateral.json"));
    let args = [
        "attest",
        "verify",
        "--format",
        "sgx",
        "--evidence",
        p(&quote),
        "--collateral",
        p(&coll),
    ];
    let mut at_ref = args.to_vec();
    at_ref.extend([
        "--at",
        "1750377600",
        "--report-data",
        "48656c6c6f2c20776f726c6421",
    ]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&at_ref)).unwrap();
    assert_eq!(claims["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    // Hex text evidence is accepted too.
    let tmp = tempfile::tempdir().unwrap();
    let hexfile = tmp.path().join("quote.hex");
    std::fs::write(&hexfile, hex::encode(std::fs::read(&quote).unwrap())).unwrap();
    let mut hexed = at_ref.clone();
    hexed[5] = p(&hexfile);
    ok(&hexed);
    // Today the collateral has expired: exit 1 with the reason on stderr.
    let today = sealdb(&args);
    assert_eq!(today.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&today.stderr).contains("rejected: evidence not authentic"));
    let debug = sealdb(&[
        "attest",
        "verify",
        "--format",
        "tdx",
        "--evidence",
        p(&t.join("tdx_quote_debug_td.dat")),
    ]);
    assert!(String::from_utf8_lossy(&debug.stderr).contains("debug mode"));
}

#[test]
fn attest_verify_snp_and_nitro() {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testvectors");
    let (rep, vcek) = (
        base.join("snp/report_milan.hex"),
        base.join("snp/vcek_milan.der"),
    );
    let claims: serde_json::Value = serde_json::from_str(&ok(&[
        "attest",
        "verify",
        "--format",
        "snp",
        "--evidence",
        p(&rep),
        "--vcek",
        p(&vcek),
    ]))
    .unwrap();
    assert_eq!(claims["versions"]["vmpl"], 0);
    let bad = sealdb(&[
        "attest",
        "verify",
        "--format",
        "snp",
        "--evidence",
        p(&rep),
        "--vcek",
        p(&base.join("snp/vcek-invalid.der")),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let doc = base.join("nitro/attestation.cose");
    ok(&[
        "attest",
        "verify",
        "--format",
        "nitro",
        "--evidence",
        p(&doc),
        "--at",
        "1736179625",
    ]);
    let today = sealdb(&[
        "attest",
        "verify",
        "--format",
        "nitro",
        "--evidence",
        p(&doc),
    ]);
    assert!(String::from_utf8_lossy(&today.stderr).contains("not valid"));
}

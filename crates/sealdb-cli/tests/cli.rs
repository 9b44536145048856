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

/// Runs a command that must be refused: exit 1, nothing on stdout; returns stderr.
fn rejected(args: &[&str]) -> String {
    let out = sealdb(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    String::from_utf8(out.stderr).unwrap()
}

/// 2026-12-04: the sample VCEKs (valid to 2030) are valid, the other samples' collateral
/// has expired. SNP runs pass it so that they keep their meaning after 2030.
const TODAY: &str = "1796342400";

/// Owned arguments as the `&str`s `sealdb` takes.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
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
    assert!(out.contains("vault status: state=Unprovisioned tee=Sim"));
    assert!(out.contains("key-check value verified"));
    assert!(out.contains("vault status: state=Provisioned tee=Sim"));
    assert!(out.contains("not found on disk"));
    assert!(out.contains("wrong master key is refused"));
    assert!(out.contains("reopened through the vault: 10000 log entries"));
    assert!(out.contains("vault stopped: the store cannot be opened"));
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
    assert!(rejected(&args).contains("rejected: evidence not authentic"));
    let mut today = args.to_vec();
    today.extend(["--at", TODAY]);
    assert!(rejected(&today).contains("rejected: evidence not authentic"));
    // Another report_data than the quote's.
    let mut wrong = at_ref.clone();
    wrong[11] = "48656c6c6f2c20776f726c6422";
    assert!(rejected(&wrong).contains("report_data"));
    let debug = rejected(&[
        "attest",
        "verify",
        "--format",
        "tdx",
        "--evidence",
        p(&t.join("tdx_quote_debug_td.dat")),
    ]);
    assert!(debug.contains("debug mode"), "{debug}");
}

#[test]
fn attest_verify_snp_and_nitro() {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testvectors");
    let (rep, vcek) = (
        base.join("snp/report_milan.hex"),
        base.join("snp/vcek_milan.der"),
    );
    // `attest verify` of the Milan report at TODAY with `vcek` and `extra` arguments.
    let snp = |vcek: &Path, extra: &[&str]| {
        let mut args = vec!["attest", "verify", "--format", "snp", "--at", TODAY];
        args.extend(["--evidence", p(&rep), "--vcek", p(vcek)]);
        args.extend(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |args: &[String]| sealdb(&strs(args));
    let out = run(&snp(&vcek, &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["versions"]["vmpl"], 0);
    let bad = run(&snp(&base.join("snp/vcek-invalid.der"), &[]));
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty());
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(why.contains("does not chain"), "{why}");
    // Collateral and evidence age limits cannot apply to SEV-SNP: accepted, with warnings.
    let tmp = tempfile::tempdir().unwrap();
    let aged = tmp.path().join("aged.toml");
    std::fs::write(
        &aged,
        "max_collateral_age_secs = 60\nmax_evidence_age_secs = 60\n",
    )
    .unwrap();
    let out = run(&snp(&vcek, &["--policy", p(&aged)]));
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr);
    for name in ["max_collateral_age_secs", "max_evidence_age_secs"] {
        assert!(
            warnings.contains(&format!("{name} does not apply")),
            "{warnings}"
        );
    }
    let doc = base.join("nitro/attestation.cose");
    // `attest verify` of a Nitro document with `extra` arguments.
    let nitro = |doc: &Path, extra: &[&str]| {
        let mut args = vec![
            "attest",
            "verify",
            "--format",
            "nitro",
            "--evidence",
            p(doc),
        ];
        args.extend(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    ok(&strs(&nitro(&doc, &["--at", "1736179625"])));
    // The document's age, a minute after it was made: within 3600 s, not within 30 s.
    let later = (1_736_179_625u64 + 60).to_string();
    for (max, accepted) in [(3600, true), (30, false)] {
        let policy = tmp.path().join(format!("nitro-{max}.toml"));
        std::fs::write(&policy, format!("max_evidence_age_secs = {max}\n")).unwrap();
        let args = nitro(&doc, &["--policy", p(&policy), "--at", &later]);
        if accepted {
            let out = run(&args);
            assert!(out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("does not apply"), "{stderr}");
        } else {
            let why = rejected(&strs(&args));
            assert!(why.contains("s old"), "{why}");
        }
    }
    let today = rejected(&strs(&nitro(&doc, &[])));
    assert!(today.contains("not valid"), "{today}");
    let debug_doc = base.join("nitro/debug-mode-doc.cbor");
    let debug = rejected(&strs(&nitro(&debug_doc, &["--at", "1665583200"])));
    assert!(debug.contains("debug mode"), "{debug}");
}

#[path = "../../sealdb-collateral/tests/support/pccs.rs"]
mod pccs;

#[test]
fn attest_fetch_and_verify_with_fetched_collateral_through_a_local_pccs() {
    let server = pccs::Server::start();
    pccs::serve_dcap(
        &server,
        "sgx_quote_collateral.json",
        "sgx",
        "00A067110000",
        "processor",
    );
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testvectors");
    let quote = base.join("dcap/sgx_quote");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("collateral.json");
    let source = ["--pccs-url", &server.base, "--cache-dir", p(&cache)];
    let mut fetch = vec![
        "attest",
        "fetch",
        "--format",
        "sgx",
        "--evidence",
        p(&quote),
    ];
    fetch.extend(["--out", p(&out)]);
    fetch.extend(source);
    assert!(ok(&fetch).starts_with("wrote"));
    assert_eq!(server.take_requests().len(), 4);
    // The saved file works offline, as --collateral.
    let verify = [
        "attest",
        "verify",
        "--format",
        "sgx",
        "--evidence",
        p(&quote),
    ];
    let at = ["--at", "1750377600"];
    let mut offline_file = verify.to_vec();
    offline_file.extend(["--collateral", p(&out)]);
    offline_file.extend(at);
    let claims: serde_json::Value = serde_json::from_str(&ok(&offline_file)).unwrap();
    assert_eq!(claims["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    // The sample's collateral expired in 2025 (nextUpdate), so it was not cached: --fetch
    // asks again, and an offline cache has nothing to give.
    let mut again = verify.to_vec();
    again.extend(["--fetch"]);
    again.extend(source);
    again.extend(at);
    let out = sealdb(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 responses fetched, 0 from the cache"));
    assert_eq!(server.take_requests().len(), 4);
    let mut offline = again.clone();
    offline.push("--offline");
    let out = sealdb(&offline);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no fresh cached copy"));
    assert!(server.take_requests().is_empty());

    // SEV-SNP: the VCEK from a local KDS, for a report that needs --product.
    let report = base.join("snp/report_milan.hex");
    let mut snp = vec![
        "attest",
        "verify",
        "--format",
        "snp",
        "--evidence",
        p(&report),
    ];
    snp.extend([
        "--fetch",
        "--no-cache",
        "--kds-url",
        &server.base,
        "--product",
        "milan",
        "--at",
        TODAY,
    ]);
    assert_eq!(sealdb(&snp).status.code(), Some(1));
    let target = server.take_requests().pop().unwrap();
    server.route(&target, 200, &[], pccs::vector("snp/vcek_milan.der"));
    let claims: serde_json::Value = serde_json::from_str(&ok(&snp)).unwrap();
    assert_eq!(
        claims["collateral"]["vcek_sha256"].as_str().unwrap().len(),
        64
    );
    // A VCEK is cached until it expires (2030): the second, offline, run needs no request.
    let snp_cache = tmp.path().join("snp-cache");
    snp[7] = "--cache-dir";
    snp.insert(8, p(&snp_cache));
    ok(&snp);
    server.take_requests();
    snp.push("--offline");
    let out = sealdb(&snp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 responses fetched, 1 from the cache"));
    assert!(server.take_requests().is_empty());
}

#[test]
fn attest_verify_sim_evidence_only_with_a_policy_that_allows_simulation() {
    use sealdb_attest::sim::{measure, SimPlatform};
    let tmp = tempfile::tempdir().unwrap();
    let platform = SimPlatform::generate().unwrap();
    let measurement = measure(b"vault binary");
    let ev = tmp.path().join("sim.bin");
    std::fs::write(&ev, platform.evidence(&measurement, &[7u8; 64])).unwrap();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "allow_insecure_simulation = true\n[measurements]\nsim_measurement = [\"{}\"]\n",
            hex::encode(measurement)
        ),
    )
    .unwrap();
    let args = ["attest", "verify", "--format", "sim", "--evidence", p(&ev)];
    let refused = sealdb(&args);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not allowed"));
    let mut allowed = args.to_vec();
    let key = hex::encode(platform.public_key());
    allowed.extend(["--policy", p(&policy), "--sim-platform-key", &key]);
    let rd = "07".repeat(64);
    allowed.extend(["--report-data", &rd]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&allowed)).unwrap();
    assert_eq!(claims["format"], "sim");
    assert_eq!(claims["debug"], true);
    let other = hex::encode(SimPlatform::generate().unwrap().public_key());
    allowed[9] = &other;
    let wrong = sealdb(&allowed);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("another simulated platform key"));
    allowed[9] = "abcd";
    let short = sealdb(&allowed);
    assert!(String::from_utf8_lossy(&short.stderr).contains("64 hex digits"));
}

/// A vault process (`sealdb vault serve --tee sim`), killed when dropped.
struct VaultProcess {
    child: std::process::Child,
    addr: String,
    /// The simulated platform key it names in its banner.
    platform_key: String,
}

impl VaultProcess {
    /// A vault for `owner` (hex public key), with an engine socket if given.
    fn start(owner: &str, socket: Option<&Path>) -> VaultProcess {
        use std::io::BufRead;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sealdb"));
        cmd.args(["vault", "serve", "--tee", "sim", "--listen", "127.0.0.1:0"])
            .args(["--owner", owner]);
        if let Some(s) = socket {
            cmd.arg("--socket").arg(s);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("INSECURE simulation"), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        let key_at = words.iter().position(|w| *w == "key").unwrap() + 1;
        VaultProcess {
            child,
            addr: words[3].to_string(),
            platform_key: words[key_at].trim_end_matches([')', ';']).to_string(),
        }
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An owner signing key file in `dir` from `seed`, and its public key (hex).
fn owner(dir: &Path, seed: u8) -> (std::path::PathBuf, String) {
    let file = dir.join(format!("owner-{seed}.key"));
    std::fs::write(&file, [seed; 32]).unwrap();
    let public = ok(&["owner-pubkey", "--owner-key", p(&file)])
        .trim()
        .to_string();
    assert_eq!(public.len(), 64);
    (file, public)
}

/// A policy that allows simulation and pins the measurement of the `sealdb` binary (the
/// binary the simulated vault runs).
fn sim_policy(dir: &Path, measurement: &str) -> std::path::PathBuf {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("allow_insecure_simulation = true\n[measurements]\nsim_measurement = [\"{measurement}\"]\n"),
    )
    .unwrap();
    policy
}

fn own_measurement() -> String {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_sealdb")).unwrap();
    hex::encode(sealdb_attest::sim::measure(&bin))
}

/// `sealdb provision` with its arguments as owned strings.
fn provision_args(vault: &str, key: &Path, owner_key: &Path, policy: &Path) -> Vec<String> {
    [
        "provision",
        "--vault",
        vault,
        "--key-file",
        p(key),
        "--owner-key",
        p(owner_key),
        "--policy",
        p(policy),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(a: &[String]) -> Output {
    sealdb(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn provisioning_a_simulated_vault_over_attested_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (owner_key, owner_pub) = owner(tmp.path(), 0x11);
    let vault = VaultProcess::start(&owner_pub, None);
    let key = tmp.path().join("master.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let status = |addr: &str| ok(&["vault", "status", "--vault", addr]);
    assert!(status(&vault.addr).contains("state=Unprovisioned tee=Sim"));
    let args = |policy: &Path| provision_args(&vault.addr, &key, &owner_key, policy);

    // A policy that pins another binary: the key is not sent.
    let wrong = sim_policy(tmp.path(), &"00".repeat(48));
    let out = run(&args(&wrong));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("refused to provision: policy refuses"));
    assert!(status(&vault.addr).contains("Unprovisioned"));

    // A policy that pins no code measurement: refused once the evidence's format is known,
    // before anything is verified or sent.
    let unpinned = tmp.path().join("unpinned.toml");
    std::fs::write(
        &unpinned,
        format!(
            "allow_insecure_simulation = true\n[measurements]\nsim_platform_key = [\"{}\"]\n",
            vault.platform_key
        ),
    )
    .unwrap();
    let out = run(&args(&unpinned));
    assert!(
        stderr_of(&out).contains("pins no code measurement"),
        "{}",
        stderr_of(&out)
    );
    assert!(status(&vault.addr).contains("Unprovisioned"));

    // The right measurement: provisioned, and the claims are those of the evidence.
    let right = sim_policy(tmp.path(), &own_measurement());
    let out = run(&args(&right));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("provisioned: the vault holds the master key"));
    assert!(stdout.contains(&own_measurement()));
    assert!(stdout.contains(&vault.platform_key));
    assert!(status(&vault.addr).contains("state=Provisioned"));
    // The same key again is a retry; another key is refused.
    assert!(run(&args(&right)).status.success());
    std::fs::write(&key, [8u8; 32]).unwrap();
    let out = run(&args(&right));
    assert!(stderr_of(&out).contains("already provisioned with another"));
}

/// Only the owner the vault was started for can provision it: a stranger who reaches the
/// port first is refused (the vault stays unprovisioned), and an owner who finds a vault
/// started for someone else refuses to send the key (the evidence binds the vault's owner).
#[test]
fn only_the_vaults_owner_can_provision_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (owner_key, owner_pub) = owner(tmp.path(), 0x11);
    let (stranger_key, _) = owner(tmp.path(), 0x22);
    let vault = VaultProcess::start(&owner_pub, None);
    let key = tmp.path().join("master.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let policy = sim_policy(tmp.path(), &own_measurement());
    // The stranger's client computes the binding with its own key: it sees a vault that is
    // not for it and refuses; the vault would refuse its signature anyway.
    let out = run(&provision_args(&vault.addr, &key, &stranger_key, &policy));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("report_data does not match"),
        "{}",
        stderr_of(&out)
    );
    assert!(ok(&["vault", "status", "--vault", &vault.addr]).contains("Unprovisioned"));
    // The owner, after that, provisions as usual.
    let out = run(&provision_args(&vault.addr, &key, &owner_key, &policy));
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// A relay that terminates TLS with its own key and forwards the owner's challenge to the
/// real vault cannot pass: the vault's evidence binds the relay's connection, not the
/// owner's, so the owner refuses and never sends the key.
#[test]
fn a_relay_between_owner_and_vault_is_refused() {
    use sealdb_crypto::tls::{rustls, TlsIdentity};
    use sealdb_vault_proto::{read_message, write_message, Message};
    let tmp = tempfile::tempdir().unwrap();
    let (owner_key, owner_pub) = owner(tmp.path(), 0x11);
    let vault = VaultProcess::start(&owner_pub, None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = listener.local_addr().unwrap().to_string();
    let upstream_addr = vault.addr.clone();
    let relay = std::thread::spawn(move || {
        let identity = TlsIdentity::generate().unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(identity.server_config()).unwrap();
        let mut owner = rustls::StreamOwned::new(conn, tcp);
        let up_tcp = std::net::TcpStream::connect(&upstream_addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("sealdb-vault").unwrap();
        let up_conn = rustls::ClientConnection::new(
            sealdb_crypto::tls::attested_client_config().unwrap(),
            name,
        )
        .unwrap();
        let mut up = rustls::StreamOwned::new(up_conn, up_tcp);
        // Forward every message both ways until the owner goes away; report whether a
        // master key ever came through.
        let mut saw_key = false;
        while let Ok(m) = read_message(&mut owner) {
            saw_key |= matches!(m, Message::MasterKey { .. });
            write_message(&mut up, &m).unwrap();
            let reply = read_message(&mut up).unwrap();
            write_message(&mut owner, &reply).unwrap();
        }
        saw_key
    });
    let key = tmp.path().join("master.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let policy = sim_policy(tmp.path(), &own_measurement());
    let out = run(&provision_args(&relay_addr, &key, &owner_key, &policy));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("report_data does not match"),
        "{}",
        stderr_of(&out)
    );
    assert!(
        !relay.join().unwrap(),
        "the master key went through the relay"
    );
    assert!(ok(&["vault", "status", "--vault", &vault.addr]).contains("Unprovisioned"));
}

#[test]
fn a_store_in_vault_key_mode_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("vault.sock");
    let (owner_key, owner_pub) = owner(tmp.path(), 0x11);
    let vault = VaultProcess::start(&owner_pub, Some(&socket));
    let dir = tmp.path().join("store");
    let with = |cmd: &[&str]| -> Vec<String> {
        cmd.iter()
            .chain(["--dir", p(&dir), "--vault-socket", p(&socket)].iter())
            .map(|s| s.to_string())
            .collect()
    };
    let ok_run = |a: &[String]| {
        let out = run(a);
        assert!(out.status.success(), "{a:?}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    // Before provisioning the vault refuses, and no store is created.
    let out = run(&with(&["init"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("not provisioned"));
    assert!(!dir.join("KEYREGISTRY").exists());
    let key = tmp.path().join("master.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let policy = sim_policy(tmp.path(), &own_measurement());
    ok_run(&provision_args(&vault.addr, &key, &owner_key, &policy));
    ok_run(&with(&["init"]));
    ok_run(&with(&["put", "k", "v"]));
    ok_run(&with(&["keys", "rotate"]));
    ok_run(&with(&["put", "k2", "v2"]));
    assert_eq!(ok_run(&with(&["get", "k"])).trim(), "v");
    // The vault and host mode share the master-key format: the owner's key file opens it.
    assert_eq!(
        ok(&["get", "k2", "--dir", p(&dir), "--key-file", p(&key)]).trim(),
        "v2"
    );
    drop(vault);
    let out = run(&with(&["get", "k"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("key provider: vault at"));

    // A vault restarted and provisioned with another master key: the store refuses it as
    // the wrong key, not as an outage.
    let other = VaultProcess::start(&owner_pub, Some(&socket));
    let other_key = tmp.path().join("other.key");
    std::fs::write(&other_key, [10u8; 32]).unwrap();
    ok_run(&provision_args(
        &other.addr,
        &other_key,
        &owner_key,
        &policy,
    ));
    let out = run(&with(&["get", "k"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("wrong master key"),
        "{}",
        stderr_of(&out)
    );
}

/// A `host` store moves into a vault by master-key rotation, and back out to a new key file.
#[test]
fn a_host_store_moves_into_a_vault_and_out_again() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("vault.sock");
    let (owner_key, owner_pub) = owner(tmp.path(), 0x11);
    let vault = VaultProcess::start(&owner_pub, Some(&socket));
    let vault_master = tmp.path().join("vault-master.key");
    std::fs::write(&vault_master, [5u8; 32]).unwrap();
    let policy = sim_policy(tmp.path(), &own_measurement());
    assert!(run(&provision_args(
        &vault.addr,
        &vault_master,
        &owner_key,
        &policy
    ))
    .status
    .success());
    let dir = tmp.path().join("store");
    let (d, s) = (p(&dir), p(&socket));
    let old = tmp.path().join("old.key");
    let new = tmp.path().join("new.key");
    std::fs::write(&old, [1u8; 32]).unwrap();
    std::fs::write(&new, [2u8; 32]).unwrap();
    let (old, new) = (p(&old), p(&new));
    ok(&["init", "--dir", d, "--key-file", old]);
    ok(&["put", "--dir", d, "--key-file", old, "k", "v"]);
    let out = ok(&[
        "keys",
        "rotate-master",
        "--dir",
        d,
        "--key-file",
        old,
        "--new-vault-socket",
        s,
    ]);
    assert!(out.contains("only the vault at"), "{out}");
    assert_eq!(
        ok(&["get", "--dir", d, "--vault-socket", s, "k"]).trim(),
        "v"
    );
    let refused = sealdb(&["get", "--dir", d, "--key-file", old, "k"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong master key"));
    ok(&[
        "keys",
        "rotate-master",
        "--dir",
        d,
        "--vault-socket",
        s,
        "--new-key-file",
        new,
    ]);
    assert_eq!(ok(&["get", "--dir", d, "--key-file", new, "k"]).trim(), "v");
    let refused = sealdb(&["get", "--dir", d, "--vault-socket", s, "k"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong master key"));
}

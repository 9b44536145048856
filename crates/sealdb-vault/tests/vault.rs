//! The vault's state machine and wire behaviour, in-process over real TLS sockets.

use std::process::Command;
use std::sync::Arc;

use sealdb_crypto::tls::rustls;
use sealdb_crypto::SecretKey;
use sealdb_crypto::SigningKey;
use sealdb_vault::{GramineSgx, Server, Simulated, Tee, Vault};
use sealdb_vault_proto::{
    owner_signed_message, read_message, write_message, Message, VaultState, EXPORTER_LABEL,
};

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn owner() -> SigningKey {
    SigningKey::from_seed(&[0x11; 32]).unwrap()
}

fn start(tee: Box<dyn Tee>) -> (String, Arc<Vault>) {
    let vault = Arc::new(Vault::new(tee, owner().public_key()));
    let server = Server::bind("127.0.0.1:0", vault.clone()).unwrap();
    let addr = server.local_addr().unwrap().to_string();
    std::thread::spawn(move || server.run());
    (addr, vault)
}

fn connect(addr: &str) -> Tls {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("sealdb-vault").unwrap();
    let conn =
        rustls::ClientConnection::new(sealdb_crypto::tls::attested_client_config().unwrap(), name)
            .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn ask(tls: &mut Tls, m: &Message) -> Message {
    write_message(tls, m).unwrap();
    read_message(tls).unwrap()
}

fn key(b: u8) -> SecretKey {
    SecretKey::from_slice(&[b; 32]).unwrap()
}

/// The master key `b`, signed by `signer` for this connection and `nonce`.
fn signed_key(tls: &Tls, b: u8, nonce: &[u8; 32], signer: &SigningKey) -> Message {
    let mut exporter = [0u8; 32];
    tls.conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .unwrap();
    Message::MasterKey {
        key: key(b),
        signature: signer.sign(&owner_signed_message(&exporter, nonce)),
    }
}

#[test]
fn a_key_is_taken_only_from_the_owner_after_evidence_on_the_same_connection() {
    let (addr, vault) = start(Box::new(Simulated::new().unwrap()));
    let mut c = connect(&addr);
    // Before any evidence on this connection: refused, whoever signs.
    // (The handshake has not run yet, so there is no exporter to sign.)
    let early = Message::MasterKey {
        key: key(1),
        signature: [0; 64],
    };
    let r = ask(&mut c, &early);
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("before evidence")),
        "{r:?}"
    );
    // Evidence on another connection does not count for this one.
    let mut other = connect(&addr);
    let r = ask(&mut other, &Message::Challenge { nonce: [1; 32] });
    assert!(matches!(r, Message::Evidence { .. }), "{r:?}");
    let m = signed_key(&c, 1, &[1; 32], &owner());
    let r = ask(&mut c, &m);
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("before evidence")),
        "{r:?}"
    );
    assert!(!vault.is_provisioned());
    // After a challenge here: a stranger's signature, or the owner's over another nonce, is
    // refused, and so is the owner's over this nonce on another connection; the owner's over
    // this connection is taken.
    let nonce = [2; 32];
    let r = ask(&mut c, &Message::Challenge { nonce });
    assert!(matches!(r, Message::Evidence { .. }), "{r:?}");
    let stranger = SigningKey::from_seed(&[0x22; 32]).unwrap();
    for (msg, why) in [
        (signed_key(&c, 1, &nonce, &stranger), "stranger"),
        (signed_key(&c, 1, &[3; 32], &owner()), "other nonce"),
        // This nonce, but the exporter of another connection (a relay's own session).
        (signed_key(&other, 1, &nonce, &owner()), "other connection"),
    ] {
        let r = ask(&mut c, &msg);
        assert!(
            matches!(r, Message::Error { ref message } if message.contains("not signed by this vault's owner")),
            "{why}: {r:?}"
        );
        assert!(!vault.is_provisioned(), "{why}");
    }
    // A second challenge on the same connection is refused.
    let r = ask(&mut c, &Message::Challenge { nonce: [4; 32] });
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("one challenge")),
        "{r:?}"
    );
    let m = signed_key(&c, 1, &nonce, &owner());
    let r = ask(&mut c, &m);
    let Message::KeyCheck { kcv } = r else {
        panic!("{r:?}")
    };
    sealdb_crypto::AeadKey::new(&key(1))
        .verify_check_value(sealdb_vault_proto::KEY_CHECK_AAD, &kcv)
        .unwrap();
    assert!(vault.is_provisioned());
    let r = ask(&mut other, &Message::StatusRequest);
    assert!(
        matches!(
            r,
            Message::Status {
                state: VaultState::Provisioned,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn owner_messages_out_of_place_and_garbage_are_answered_with_errors() {
    let (addr, vault) = start(Box::new(Simulated::new().unwrap()));
    let mut c = connect(&addr);
    let r = ask(&mut c, &Message::KeyCheck { kcv: vec![1] });
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("unexpected KeyCheck")),
        "{r:?}"
    );
    // A frame of another version: an error naming it, then the connection closes.
    use std::io::Write;
    c.write_all(&[0, 0, 0, 2, 9, 1]).unwrap();
    c.flush().unwrap();
    let r = read_message(&mut c).unwrap();
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("version 9")),
        "{r:?}"
    );
    assert!(read_message(&mut c).is_err());
    assert!(!vault.is_provisioned());
    // The vault still serves others.
    let mut d = connect(&addr);
    assert!(matches!(
        ask(&mut d, &Message::StatusRequest),
        Message::Status { .. }
    ));
}

#[test]
fn provisioning_is_idempotent_for_the_same_key_only() {
    let vault = Vault::new(Box::new(Simulated::new().unwrap()), owner().public_key());
    let signed = b"message";
    let sig = owner().sign(signed);
    let a = vault.provision(key(3), signed, &sig).unwrap();
    let b = vault.provision(key(3), signed, &sig).unwrap();
    assert_ne!(a, b, "key-check values use fresh nonces");
    assert!(matches!(
        vault.provision(key(4), signed, &sig),
        Err(sealdb_vault::VaultError::AlreadyProvisioned)
    ));
    assert!(matches!(
        vault.provision(key(3), b"other", &sig),
        Err(sealdb_vault::VaultError::NotOwner)
    ));
}

/// Gramine's attestation pseudo-files, faked by a directory: the report data written, the
/// quote read back.
#[test]
fn gramine_evidence_comes_from_its_attestation_files() {
    let dir = tempfile::tempdir().unwrap();
    let quote = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/testvectors/dcap/sgx_quote"),
    )
    .unwrap();
    std::fs::write(dir.path().join("quote"), &quote).unwrap();
    let tee = GramineSgx::new(dir.path());
    assert_eq!(tee.evidence(&[5; 64]).unwrap(), quote);
    assert_eq!(
        std::fs::read(dir.path().join("user_report_data")).unwrap(),
        [5; 64]
    );
    assert_eq!(tee.format(), sealdb_attest::Format::Sgx);
    assert!(tee.identity().is_none());
    let missing = GramineSgx::new(dir.path().join("absent"));
    let e = missing.evidence(&[0; 64]).unwrap_err().to_string();
    assert!(e.contains("user_report_data"), "{e}");
}

/// A simulated vault for `owner()`, not provisioned, and a directory for its socket.
fn sim_vault() -> (tempfile::TempDir, Arc<Vault>) {
    let vault = Vault::new(Box::new(Simulated::new().unwrap()), owner().public_key());
    (tempfile::tempdir().unwrap(), Arc::new(vault))
}

/// The vault closes an engine connection that stays idle past its limit, without a word;
/// the client's next request reconnects (checking the pinned master key) and succeeds.
#[test]
fn an_idle_engine_connection_is_closed_and_the_client_reconnects() {
    use sealdb::KeyProvider;
    let (dir, vault) = sim_vault();
    let path = dir.path().join("vault.sock");
    vault.provision(key(5), b"m", &owner().sign(b"m")).unwrap();
    let idle = std::time::Duration::from_millis(200);
    let local = sealdb_vault::LocalServer::bind(&path, vault.clone())
        .unwrap()
        .with_idle_limit(idle);
    std::thread::spawn(move || local.run());
    // A raw connection left idle is closed: EOF, not an unasked-for Error frame.
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut raw, &mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes sent on close", rest.len());
    let client = sealdb_vault_client::VaultKeyProvider::connect(&path).unwrap();
    let (dk, wrapped) = client.new_data_key(b"k").unwrap();
    for _ in 0..3 {
        std::thread::sleep(idle * 3);
        let back = client.unwrap_data_key(b"k", &wrapped).unwrap().unwrap();
        assert!(back.ct_eq(&dk));
    }
}

#[test]
fn the_engine_socket_serves_master_key_operations_only_when_provisioned() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, vault) = sim_vault();
    let path = dir.path().join("vault.sock");
    let local = sealdb_vault::LocalServer::bind(&path, vault.clone()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::thread::spawn(move || local.run());
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut call = |m: Message| {
        write_message(&mut s, &m).unwrap();
        read_message(&mut s).unwrap()
    };
    let r = call(Message::MakeCheckValue { aad: b"a".to_vec() });
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("not provisioned")),
        "{r:?}"
    );
    vault.provision(key(1), b"m", &owner().sign(b"m")).unwrap();
    let Message::Bytes { data: kcv } = call(Message::MakeCheckValue { aad: b"a".to_vec() }) else {
        panic!()
    };
    assert!(matches!(
        call(Message::VerifyCheckValue {
            aad: b"a".to_vec(),
            kcv: kcv.clone()
        }),
        Message::Verdict { ok: true }
    ));
    assert!(matches!(
        call(Message::VerifyCheckValue {
            aad: b"b".to_vec(),
            kcv
        }),
        Message::Verdict { ok: false }
    ));
    let Message::DataKey { key: dk, wrapped } = call(Message::NewDataKey {
        aad: b"k1".to_vec(),
    }) else {
        panic!()
    };
    let Message::Unwrapped { key: Some(back) } = call(Message::UnwrapDataKey {
        aad: b"k1".to_vec(),
        wrapped: wrapped.clone(),
    }) else {
        panic!()
    };
    assert!(back.ct_eq(&dk));
    // Bound to its aad, and the same bytes as the engine's own master-key code.
    assert!(matches!(
        call(Message::UnwrapDataKey {
            aad: b"k2".to_vec(),
            wrapped: wrapped.clone()
        }),
        Message::Unwrapped { key: None }
    ));
    let host = sealdb_crypto::MasterKey::new(&key(1));
    assert!(host.unwrap(b"k1", &wrapped).unwrap().ct_eq(&dk));
    let Message::Bytes { data: tag } = call(Message::Authenticate {
        data: b"registry".to_vec(),
    }) else {
        panic!()
    };
    assert!(host.verify_tag(b"registry", &tag));
    assert!(matches!(
        call(Message::VerifyTag {
            data: b"registrx".to_vec(),
            tag
        }),
        Message::Verdict { ok: false }
    ));
    // Provisioning messages do not belong on this socket.
    let r = call(Message::Challenge { nonce: [0; 32] });
    assert!(
        matches!(r, Message::Error { ref message } if message.contains("unexpected Challenge")),
        "{r:?}"
    );
    // A second vault cannot take over the socket of a running one.
    let other = Arc::new(Vault::new(
        Box::new(Simulated::new().unwrap()),
        owner().public_key(),
    ));
    let e = sealdb_vault::LocalServer::bind(&path, other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another vault"), "{e}");
}

/// configfs-tsm, faked by a directory tree: the kernel's attribute files are written ahead
/// into the report directories the vault will use (configfs creates them on mkdir), and
/// `outblob` is a FIFO served by a thread playing the kernel: when the vault opens it, the
/// "kernel" sets `generation` (one write: ours, or more: someone else's too) and answers.
#[test]
fn configfs_tsm_evidence_comes_from_its_report_directory() {
    let root = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let report = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/testvectors/dcap/tdx_quote"),
    )
    .unwrap();
    let dir = |n: u32| root.path().join(format!("sealdb-vault-{pid}-{n}"));
    // Directory 0 is the probe; 1 and 2 serve requests, 2 with a concurrent writer.
    let mut kernels = Vec::new();
    for n in 0..3 {
        let d = dir(n);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("provider"), "tdx_guest\n").unwrap();
        std::fs::write(d.join("generation"), "1\n").unwrap();
        if n == 0 {
            continue;
        }
        let fifo = d.join("outblob");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let report = report.clone();
        kernels.push(std::thread::spawn(move || {
            // Blocks until the vault opens outblob for reading.
            let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let writes = if n == 1 { 1 } else { 2 };
            std::fs::write(d.join("generation"), format!("{}\n", 1 + writes)).unwrap();
            std::io::Write::write_all(&mut out, &report).unwrap();
        }));
    }
    let tee = sealdb_vault::ConfigfsTsm::new(root.path()).unwrap();
    assert_eq!(tee.format(), sealdb_attest::Format::Tdx);
    assert_eq!(tee.evidence(&[6; 64]).unwrap(), report);
    assert_eq!(std::fs::read(dir(1).join("inblob")).unwrap(), [6; 64]);
    let e = tee.evidence(&[7; 64]).unwrap_err().to_string();
    assert!(e.contains("another process"), "{e}");
    for k in kernels {
        k.join().unwrap();
    }
    // Another provider, or none, is refused by name.
    let other = tempfile::tempdir().unwrap();
    let d = other.path().join(format!("sealdb-vault-{pid}-0"));
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("provider"), "arm_cca\n").unwrap();
    let e = sealdb_vault::ConfigfsTsm::new(other.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("arm_cca"), "{e}");
    let e = sealdb_vault::ConfigfsTsm::new(other.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent"), "{e}");
}

/// The `sealdb-vault` binary with an engine socket; killed when dropped.
struct VaultBinary(std::process::Child, String);

impl VaultBinary {
    fn start(socket: &std::path::Path) -> VaultBinary {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealdb-vault"))
            .args(["--listen", "127.0.0.1:0", "--tee", "sim", "--owner"])
            .arg(
                owner()
                    .public_key()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
            .arg("--socket")
            .arg(socket)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.split_whitespace().nth(3).unwrap().to_string();
        VaultBinary(child, addr)
    }

    /// Provisions it with master key `b`, as the owner.
    fn provision(&self, b: u8) {
        let mut c = connect(&self.1);
        let nonce = [b; 32];
        assert!(matches!(
            ask(&mut c, &Message::Challenge { nonce }),
            Message::Evidence { .. }
        ));
        let m = signed_key(&c, b, &nonce, &owner());
        assert!(matches!(ask(&mut c, &m), Message::KeyCheck { .. }));
    }
}

impl Drop for VaultBinary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The engine's client pins the vault's master key: after the vault restarts, it is used
/// again only if it holds the same master key.
#[test]
fn the_engine_client_pins_the_vaults_master_key_across_restarts() {
    use sealdb::KeyProvider;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vault.sock");
    let vault = VaultBinary::start(&socket);
    // Not provisioned yet: the client refuses to start.
    let e = sealdb_vault_client::VaultKeyProvider::connect(&socket).unwrap_err();
    assert!(e.to_string().contains("not provisioned"), "{e}");
    vault.provision(1);
    let client = sealdb_vault_client::VaultKeyProvider::connect(&socket).unwrap();
    let (dk, wrapped) = client.new_data_key(b"aad").unwrap();
    drop(vault);
    // Restarted and provisioned with another master key: refused, by name.
    let other = VaultBinary::start(&socket);
    other.provision(2);
    let e = client.unwrap_data_key(b"aad", &wrapped).unwrap_err();
    assert!(e.to_string().contains("another master key"), "{e}");
    drop(other);
    // Restarted with the same master key: used again, and it unwraps what it wrapped.
    let again = VaultBinary::start(&socket);
    again.provision(1);
    let back = client.unwrap_data_key(b"aad", &wrapped).unwrap().unwrap();
    assert!(back.ct_eq(&dk));
}

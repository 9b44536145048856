//! The owner's side of provisioning: attest the vault over TLS, then hand it the master key.
//!
//! 1. TLS 1.3 to the vault; its certificate is taken as it is
//!    ([`sealdb_crypto::tls::attested_client_config`]).
//! 2. A fresh 32-byte nonce; the vault answers with evidence.
//! 3. The expected report_data is computed from this side's view of the connection
//!    ([`sealdb_vault_proto::binding`]: the certificate's public key, the nonce, the TLS
//!    exporter, the owner's public key), and the evidence is checked by
//!    [`sealdb_attest::verify`], the same verifier as `sealdb attest verify`, with the owner's
//!    policy. The policy must pin a code measurement.
//! 4. Only then the master key goes out, on the same connection, signed with the owner's key
//!    over this connection's exporter and nonce; the vault's key-check value proves it
//!    arrived intact.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sealdb_attest::{Claims, Evidence, Format};
use sealdb_crypto::tls::rustls;
use sealdb_crypto::{AeadKey, SecretKey};
use sealdb_vault_proto::{
    binding, owner_signed_message, read_message, spki_of_certificate, write_message, Deadline,
    Message, EXPORTER_LABEL, EXPORTER_LEN, KEY_CHECK_AAD, NONCE_LEN,
};

use crate::attest::{read_policy, unix_now, warn_limits_without_effect, EndorsementArgs};
use crate::{fail, Failure};

/// How a policy pins one claim: only pins that exclude other code count.
#[derive(Clone, Copy)]
enum Pin {
    /// A non-empty list of reference values under `[measurements]`.
    Measured(&'static str),
    /// An exact value under `[versions]`.
    Exactly(&'static str),
    /// An exact value, or a floor under `[min_versions]` (a version that only grows).
    AtLeast(&'static str),
    /// An exact value, or a ceiling under `[max_versions]` (a privilege level: lower is
    /// more privileged, so a floor would exclude nothing).
    AtMost(&'static str),
}

impl Pin {
    fn name(self) -> &'static str {
        match self {
            Pin::Measured(n) | Pin::Exactly(n) | Pin::AtLeast(n) | Pin::AtMost(n) => n,
        }
    }

    fn is_pinned_by(self, policy: &sealdb_attest::Policy) -> bool {
        let exact = |n| policy.versions.contains_key(n);
        match self {
            Pin::Measured(n) => policy.measurements.get(n).is_some_and(|v| !v.is_empty()),
            Pin::Exactly(n) => exact(n),
            Pin::AtLeast(n) => exact(n) || policy.min_versions.contains_key(n),
            Pin::AtMost(n) => exact(n) || policy.max_versions.contains_key(n),
        }
    }
}

/// What a policy must pin, by evidence format, before a key is released: claims that
/// measure the vault's code, not only the platform. Each inner list is one acceptable set.
fn code_pins(format: Format) -> &'static [&'static [Pin]] {
    use Pin::{AtLeast, AtMost, Exactly, Measured};
    match format {
        // MRENCLAVE, or a signer with its product and a minimum version.
        Format::Sgx => &[
            &[Measured("mr_enclave")],
            &[
                Measured("mr_signer"),
                Exactly("isv_prod_id"),
                AtLeast("isv_svn"),
            ],
        ],
        // The TD's initial image and the runtime measurements of kernel and its input.
        Format::Tdx => &[&[Measured("mr_td"), Measured("rtmr1"), Measured("rtmr2")]],
        // The launch measurement, and the VMPL the report was requested from (a report
        // from a less privileged level under an SVSM carries the same measurement).
        Format::Snp => &[&[Measured("measurement"), AtMost("vmpl")]],
        Format::Nitro => &[&[Measured("pcr0")]],
        Format::Sim => &[&[Measured("sim_measurement")]],
        _ => &[],
    }
}

/// Whether `policy` pins every claim of one of `format`'s code-pin sets.
fn pins_code(policy: &sealdb_attest::Policy, format: Format) -> bool {
    code_pins(format)
        .iter()
        .any(|set| set.iter().all(|pin| pin.is_pinned_by(policy)))
}

/// How long the owner waits for the vault: to connect, and then for the whole exchange.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub(crate) struct ProvisionArgs {
    /// The vault's provisioning address (HOST:PORT).
    #[arg(long)]
    vault: String,
    /// The master key file (32 raw bytes or 64 hex digits).
    #[arg(long)]
    key_file: PathBuf,
    /// The owner's signing key file (32 raw bytes or 64 hex digits, an Ed25519 seed): the
    /// vault takes a master key only if signed by the owner it was started for.
    #[arg(long)]
    owner_key: PathBuf,
    /// The owner's policy (TOML); it must pin a measurement.
    #[arg(long)]
    policy: PathBuf,
    /// Release the key under a policy that pins no measurement (any code in a genuine TEE
    /// would get it).
    #[arg(long)]
    allow_unpinned: bool,
    #[command(flatten)]
    endorse: EndorsementArgs,
}

impl ProvisionArgs {
    /// Provisioning `vault` with the key in `key_file` under `policy`, endorsements from
    /// the evidence alone (as for `sim`).
    pub(crate) fn new(vault: &str, key_file: PathBuf, owner_key: PathBuf, policy: PathBuf) -> Self {
        ProvisionArgs {
            vault: vault.to_string(),
            key_file,
            owner_key,
            policy,
            allow_unpinned: false,
            endorse: EndorsementArgs::default(),
        }
    }
}

impl ProvisionArgs {
    /// Accepts only `sim` evidence of this simulated platform key (hex).
    pub(crate) fn pin_sim_platform(&mut self, key_hex: &str) {
        self.endorse.pin_sim_platform(key_hex);
    }
}

/// A TLS connection to a vault.
type Tls = rustls::StreamOwned<rustls::ClientConnection, Deadline<TcpStream>>;

pub(crate) fn connect(addr: &str) -> Result<Tls, Failure> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| fail(format!("vault address {addr}: {e}")))?
        .next()
        .ok_or_else(|| fail(format!("vault address {addr} resolves to nothing")))?;
    let tcp = TcpStream::connect_timeout(&sock, TIMEOUT)
        .map_err(|e| fail(format!("connecting to the vault at {addr}: {e}")))?;
    // One deadline for the whole exchange: a peer that trickles bytes cannot stretch it.
    let tcp = Deadline::new(tcp, TIMEOUT);
    let config = sealdb_crypto::tls::attested_client_config().map_err(|e| fail(e.to_string()))?;
    let name =
        rustls::pki_types::ServerName::try_from("sealdb-vault").map_err(|e| fail(e.to_string()))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| fail(e.to_string()))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn wire(e: sealdb_vault_proto::ProtoError) -> Failure {
    fail(format!("vault connection: {e}"))
}

/// The owner's signing key from its file.
pub(crate) fn read_owner_key(path: &std::path::Path) -> Result<sealdb_crypto::SigningKey, Failure> {
    let seed = sealdb::read_key_file(path)?;
    sealdb_crypto::SigningKey::from_seed(seed.danger_export()).map_err(|e| fail(e.to_string()))
}

fn refused(what: &str, m: Message) -> Failure {
    match m {
        // The vault's text may hold anything: shown escaped, never as terminal controls.
        Message::Error { message } => fail(format!(
            "the vault refused {what}: {}",
            message.escape_debug()
        )),
        other => fail(format!(
            "expected the vault's answer to {what}, got {}",
            other.name()
        )),
    }
}

/// Attests the vault and provisions it; returns the claims the key was released on.
pub(crate) fn provision(args: &ProvisionArgs) -> Result<Claims, Failure> {
    let policy = read_policy(Some(&args.policy))?;
    let key = sealdb::read_key_file(&args.key_file)?;
    let owner = read_owner_key(&args.owner_key)?;
    let mut tls = connect(&args.vault)?;
    let mut nonce = [0u8; NONCE_LEN];
    sealdb_crypto::fill_random(&mut nonce).map_err(|e| fail(e.to_string()))?;
    write_message(&mut tls, &Message::Challenge { nonce }).map_err(wire)?;
    let (format, evidence) = match read_message(&mut tls).map_err(wire)? {
        Message::Evidence { format, evidence } => (format, evidence),
        other => return Err(refused("the challenge", other)),
    };
    if !pins_code(&policy, format) && !args.allow_unpinned {
        let sets: Vec<String> = code_pins(format)
            .iter()
            .map(|s| s.iter().map(|p| p.name()).collect::<Vec<_>>().join(" + "))
            .collect();
        return Err(fail(format!(
            "the policy {} pins no code measurement for {format:?} evidence (one of: {}), so \
             any code in a genuine TEE would get the key; pin one or pass --allow-unpinned",
            args.policy.display(),
            sets.join("; ")
        )));
    }
    // This side's view of the connection: the key the server proved it holds in the
    // handshake, and the exporter value of this session.
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| fail("the vault presented no TLS certificate"))?;
    let spki = spki_of_certificate(cert).map_err(wire)?;
    let mut exporter = [0u8; EXPORTER_LEN];
    tls.conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .map_err(|e| fail(format!("TLS exporter: {e}")))?;
    let expected = binding(&spki, &nonce, &exporter, &owner.public_key());
    let endorsements = args.endorse.endorsements(format, &evidence)?;
    let claims = sealdb_attest::verify(
        &Evidence {
            format,
            bytes: &evidence,
        },
        &endorsements,
        &policy,
        Some(&expected),
        unix_now(),
    )
    .map_err(|reason| Failure(format!("refused to provision: {reason}"), 1))?;
    warn_limits_without_effect(&policy, &claims);
    let signature = owner.sign(&owner_signed_message(&exporter, &nonce));
    send_key(&mut tls, key, signature)?;
    Ok(claims)
}

/// Sends the master key and checks the vault's key-check value.
fn send_key(tls: &mut Tls, key: SecretKey, signature: [u8; 64]) -> Result<(), Failure> {
    let check = AeadKey::new(&key);
    write_message(tls, &Message::MasterKey { key, signature }).map_err(wire)?;
    match read_message(tls).map_err(wire)? {
        Message::KeyCheck { kcv } => check
            .verify_check_value(KEY_CHECK_AAD, &kcv)
            .map_err(|_| fail("the vault's key-check value does not match the master key")),
        other => Err(refused("the master key", other)),
    }
}

/// The vault's state, as it reports it (not attested).
pub(crate) fn status(addr: &str) -> Result<String, Failure> {
    let mut tls = connect(addr)?;
    write_message(&mut tls, &Message::StatusRequest).map_err(wire)?;
    match read_message(&mut tls).map_err(wire)? {
        Message::Status { state, tee } => Ok(format!("state={state:?} tee={tee:?}")),
        other => Err(refused("the status request", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(toml: &str, format: Format) -> bool {
        pins_code(&sealdb_attest::Policy::from_toml(toml).unwrap(), format)
    }

    #[test]
    fn a_policy_must_pin_every_claim_of_one_code_pin_set() {
        let m = "[measurements]\nmeasurement = [\"ab\"]\n";
        assert!(!pins(m, Format::Snp), "SNP needs vmpl too");
        assert!(pins(&format!("{m}[versions]\nvmpl = 0\n"), Format::Snp));
        assert!(pins(&format!("{m}[max_versions]\nvmpl = 0\n"), Format::Snp));
        // A floor on the VMPL excludes no less privileged level.
        assert!(!pins(
            &format!("{m}[min_versions]\nvmpl = 0\n"),
            Format::Snp
        ));
        // An empty list pins nothing; a platform claim is not code.
        let empty = "[measurements]\nmeasurement = []\nchip_id = [\"ab\"]\n[versions]\nvmpl = 0\n";
        assert!(!pins(empty, Format::Snp));
        let signer = "[measurements]\nmr_signer = [\"ab\"]\n[versions]\nisv_prod_id = 1\n";
        assert!(!pins(signer, Format::Sgx));
        let signed = format!("{signer}[min_versions]\nisv_svn = 0\n");
        assert!(pins(&signed, Format::Sgx));
        assert!(!pins(&signed, Format::Tdx));
        // The product id must be exact, and a ceiling on the SVN is no floor.
        let loose =
            "[measurements]\nmr_signer = [\"ab\"]\n[min_versions]\nisv_prod_id = 1\nisv_svn = 0\n";
        assert!(!pins(loose, Format::Sgx));
        assert!(!pins(
            &format!("{signer}[max_versions]\nisv_svn = 9\n"),
            Format::Sgx
        ));
        assert!(pins("[measurements]\nmr_enclave = [\"ab\"]\n", Format::Sgx));
    }
}

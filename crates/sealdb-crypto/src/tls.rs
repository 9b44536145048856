//! TLS 1.3 for attested connections (owner ↔ vault), through `rustls` on `ring`.
//!
//! The vault makes a fresh key pair and a self-signed certificate at start ([`TlsIdentity`]);
//! the private key never leaves the process (inside a TEE, never leaves the TEE). The owner
//! connects with [`attested_client_config`], which accepts *any* server certificate: who the
//! server is comes from attestation, not from a certificate authority. The caller must bind
//! the certificate's public key into the evidence's report_data (together with a fresh nonce
//! and the TLS exporter value) and verify that evidence before sending anything secret. The
//! handshake signature is still checked, so the server holds the certificate's private key.

use std::sync::Arc;

pub use rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating the key pair or certificate failed.
    #[error("generating the TLS identity: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server identity made in this process: an ECDSA P-256 key pair and a self-signed
/// certificate for it.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// A fresh key pair and certificate (subject `sealdb-vault`), and a TLS 1.3 server
    /// configuration that presents them.
    pub fn generate() -> Result<Self, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
        let params =
            rcgen::CertificateParams::new(vec!["sealdb-vault".to_string()]).map_err(gen)?;
        let cert = params.self_signed(&key).map_err(gen)?;
        let cert = cert.der().clone();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)?;
        // Every connection is a full handshake: no tickets, no session cache, no early data.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.max_early_data_size = 0;
        Ok(TlsIdentity {
            cert,
            config: Arc::new(config),
        })
    }

    /// The certificate (DER).
    pub fn certificate(&self) -> &[u8] {
        &self.cert
    }

    /// The server configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// A TLS 1.3 client configuration that accepts any server certificate but checks the
/// handshake signature with its key. Only for connections whose server is then proven by
/// attestation bound to that key (see the module documentation).
pub fn attested_client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let p = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedServer(p)))
        .with_no_client_auth();
    // Every connection is a full handshake whose exporter the evidence binds.
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// Accepts the server's certificate as it is; attestation decides whether to trust it.
#[derive(Debug)]
struct AttestedServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AttestedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One TLS 1.3 connection over loopback; returns (client exporter, server exporter,
    /// the certificate the client saw).
    fn connect(id: &TlsIdentity) -> ([u8; 32], [u8; 32], Vec<u8>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = id.server_config();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(server_config).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            let mut out = [0u8; 32];
            s.conn
                .export_keying_material(&mut out, b"EXPORTER-test", None)
                .unwrap();
            s.write_all(b"world").unwrap();
            s.flush().unwrap();
            out
        });
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let name = ServerName::try_from("sealdb-vault").unwrap();
        let conn = rustls::ClientConnection::new(attested_client_config().unwrap(), name).unwrap();
        let mut c = rustls::StreamOwned::new(conn, tcp);
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");
        assert_eq!(
            c.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let mut out = [0u8; 32];
        c.conn
            .export_keying_material(&mut out, b"EXPORTER-test", None)
            .unwrap();
        let seen = c.conn.peer_certificates().unwrap()[0].to_vec();
        (out, server.join().unwrap(), seen)
    }

    #[test]
    fn attested_client_connects_and_both_sides_share_the_exporter() {
        let id = TlsIdentity::generate().unwrap();
        let (a, b, cert) = connect(&id);
        assert_eq!(a, b);
        assert_eq!(cert, id.certificate());
        // Another connection exports another value; another identity another certificate.
        let (c, _, _) = connect(&id);
        assert_ne!(a, c);
        let other = TlsIdentity::generate().unwrap();
        assert_ne!(other.certificate(), id.certificate());
    }
}

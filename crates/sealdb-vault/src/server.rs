//! The provisioning listener: TLS 1.3 over TCP, one thread per connection.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sealdb_crypto::tls::{rustls, TlsIdentity};
use sealdb_vault_proto::{
    binding, read_message, spki_of_certificate, write_message, Message, ProtoError, VaultState,
    EXPORTER_LABEL, EXPORTER_LEN,
};

use crate::{Vault, VaultError};

/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(60);

/// A bound provisioning listener with its TLS identity.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    identity: Arc<TlsIdentity>,
    spki: Vec<u8>,
    vault: Arc<Vault>,
}

impl Server {
    /// Binds `addr` with a fresh TLS identity.
    pub fn bind(addr: &str, vault: Arc<Vault>) -> Result<Server, VaultError> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| VaultError::Protocol(format!("cannot listen on {addr}: {e}")))?;
        let identity = TlsIdentity::generate().map_err(|e| VaultError::Crypto(e.to_string()))?;
        let spki = spki_of_certificate(identity.certificate())?;
        Ok(Server {
            listener,
            identity: Arc::new(identity),
            spki,
            vault,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, VaultError> {
        self.listener
            .local_addr()
            .map_err(|e| VaultError::Protocol(e.to_string()))
    }

    /// Serves connections until the process ends.
    pub fn run(self) {
        let shared = Arc::new(self);
        for stream in shared.listener.incoming() {
            let Ok(tcp) = stream else { continue };
            let s = shared.clone();
            std::thread::spawn(move || {
                // A failed connection affects only itself; the owner sees it as an error
                // or a closed connection.
                let _ = s.handle(tcp);
            });
        }
    }

    fn handle(&self, tcp: TcpStream) -> Result<(), VaultError> {
        tcp.set_read_timeout(Some(IDLE))
            .and_then(|_| tcp.set_write_timeout(Some(IDLE)))
            .map_err(ProtoError::Io)?;
        let conn = rustls::ServerConnection::new(self.identity.server_config())
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Whether this connection has received evidence bound to it: a key is taken only
        // on a connection the owner could have verified.
        let mut attested = false;
        loop {
            let msg = match read_message(&mut tls) {
                Ok(m) => m,
                Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Err(e) => {
                    let _ = write_message(
                        &mut tls,
                        &Message::Error {
                            message: e.to_string(),
                        },
                    );
                    return Err(e.into());
                }
            };
            let reply = match msg {
                Message::Challenge { nonce } => {
                    let mut exporter = [0u8; EXPORTER_LEN];
                    tls.conn
                        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
                        .map_err(|e| VaultError::Crypto(e.to_string()))?;
                    let rd = binding(&self.spki, &nonce, &exporter);
                    match self.vault.tee().evidence(&rd) {
                        Ok(evidence) => {
                            attested = true;
                            Message::Evidence {
                                format: self.vault.tee().format(),
                                evidence,
                            }
                        }
                        Err(e) => Message::Error {
                            message: e.to_string(),
                        },
                    }
                }
                Message::MasterKey(key) if attested => match self.vault.provision(key) {
                    Ok(kcv) => Message::KeyCheck { kcv },
                    Err(e) => Message::Error {
                        message: e.to_string(),
                    },
                },
                Message::MasterKey(_) => Message::Error {
                    message: "refused: a master key before evidence on this connection".into(),
                },
                Message::StatusRequest => Message::Status {
                    state: if self.vault.is_provisioned() {
                        VaultState::Provisioned
                    } else {
                        VaultState::Unprovisioned
                    },
                    tee: self.vault.tee().format(),
                },
                other => Message::Error {
                    message: format!("unexpected {} from the owner", other.name()),
                },
            };
            write_message(&mut tls, &reply)?;
        }
    }
}

/// Binds `addr` (and the engine's `socket`, if given) and serves forever; prints the bound
/// address first.
pub fn serve(
    addr: &str,
    socket: Option<&std::path::Path>,
    vault: Arc<Vault>,
) -> Result<(), VaultError> {
    let local = socket
        .map(|p| crate::LocalServer::bind(p, vault.clone()))
        .transpose()?;
    let server = Server::bind(addr, vault)?;
    let bound = server.local_addr()?;
    let socket_note = local
        .as_ref()
        .map(|l| format!("; engine socket {}", l.path().display()))
        .unwrap_or_default();
    if let Some(l) = local {
        std::thread::spawn(move || l.run());
    }
    let sim = server.vault.tee().is_simulated();
    println!(
        "sealdb-vault listening on {bound} (tee: {:?}{}){socket_note}",
        server.vault.tee().format(),
        if sim {
            ", INSECURE simulation: not a TEE"
        } else {
            ""
        }
    );
    std::io::Write::flush(&mut std::io::stdout()).map_err(ProtoError::Io)?;
    server.run();
    Ok(())
}

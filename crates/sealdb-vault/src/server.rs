//! The provisioning listener: TLS 1.3 over TCP, one thread per connection.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sealdb_crypto::tls::{rustls, TlsIdentity};
use sealdb_vault_proto::{
    binding, owner_signed_message, read_message, spki_of_certificate, write_message, Deadline,
    Message, ProtoError, VaultState, EXPORTER_LABEL, EXPORTER_LEN,
};

use crate::{Vault, VaultError};

/// How long one provisioning connection may last in all.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// How long a new connection may take to complete the handshake and send its challenge (or
/// to do only status requests), so idle connections cannot hold the few slots for long.
const FIRST_MESSAGE_DEADLINE: Duration = Duration::from_secs(10);
/// Provisioning connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;

/// Spawns `work` on a thread if fewer than `max` are running under `count`; otherwise (or if
/// the thread cannot be made) drops it. Never panics the accepting thread.
pub(crate) fn spawn_bounded(
    count: &Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    work: impl FnOnce() + Send + 'static,
) -> bool {
    use std::sync::atomic::Ordering;
    if count.fetch_add(1, Ordering::AcqRel) >= max {
        count.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    /// Gives the slot back when the thread ends, even by a panic.
    struct Slot(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let slot = Slot(count.clone());
    let spawned = std::thread::Builder::new().spawn(move || {
        let _slot = slot;
        work();
    });
    // If the thread could not be made, the closure (and its slot) was dropped already.
    spawned.is_ok()
}

/// Writes an audit line to stderr; a closed stderr loses the line, never the vault.
pub(crate) fn audit(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "sealdb-vault: {line}");
}

/// After a failed accept (e.g. out of file descriptors), wait a little instead of spinning.
pub(crate) fn accept_backoff() {
    std::thread::sleep(Duration::from_millis(50));
}

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
            .map_err(|e| VaultError::Config(format!("cannot listen on {addr}: {e}")))?;
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
            .map_err(|e| VaultError::Config(e.to_string()))
    }

    /// Serves connections until the process ends: at most [`MAX_CONNECTIONS`] at once, each
    /// for at most [`CONNECTION_DEADLINE`].
    pub fn run(self) {
        let shared = Arc::new(self);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in shared.listener.incoming() {
            let tcp = match stream {
                Ok(tcp) => tcp,
                Err(_) => {
                    accept_backoff();
                    continue;
                }
            };
            let peer = tcp
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            let s = shared.clone();
            let accepted = spawn_bounded(&running, MAX_CONNECTIONS, move || {
                // A failed connection affects only itself; the owner sees it as an error
                // or a closed connection.
                if let Err(e) = s.handle(tcp, &peer) {
                    audit(format_args!("connection from {peer}: {e}"));
                }
            });
            if !accepted {
                audit(format_args!("too many connections; one refused"));
            }
        }
    }

    fn handle(&self, tcp: TcpStream, peer: &str) -> Result<(), VaultError> {
        let conn = rustls::ServerConnection::new(self.identity.server_config())
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let start = std::time::Instant::now();
        let io = Deadline::new(tcp, FIRST_MESSAGE_DEADLINE);
        let mut tls = rustls::StreamOwned::new(conn, io);
        // The nonce and exporter of the evidence sent on this connection: a key is taken
        // only on a connection the owner could have verified, signed for this connection.
        let mut attested: Option<([u8; 32], [u8; EXPORTER_LEN])> = None;
        loop {
            let msg = match read_message(&mut tls) {
                Ok(m) => {
                    // Once it asks for evidence the connection may run to the full
                    // deadline; status requests alone keep the short one, so they cannot
                    // hold the few slots for long.
                    if matches!(m, Message::Challenge { .. }) {
                        tls.sock.set_from(start, CONNECTION_DEADLINE);
                    }
                    m
                }
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
                Message::Challenge { .. } if attested.is_some() => Message::Error {
                    message: "one challenge per connection".into(),
                },
                Message::Challenge { nonce } => {
                    let mut exporter = [0u8; EXPORTER_LEN];
                    tls.conn
                        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
                        .map_err(|e| VaultError::Crypto(e.to_string()))?;
                    let rd = binding(&self.spki, &nonce, &exporter, self.vault.owner());
                    audit(format_args!("challenge from {peer}"));
                    match self.vault.tee().evidence(&rd) {
                        Ok(evidence) => {
                            attested = Some((nonce, exporter));
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
                Message::MasterKey { key, signature } => match attested {
                    Some((nonce, exporter)) => {
                        let signed = owner_signed_message(&exporter, &nonce);
                        match self.vault.provision(key, &signed, &signature) {
                            Ok(kcv) => {
                                audit(format_args!("provisioned by the owner from {peer}"));
                                Message::KeyCheck { kcv }
                            }
                            Err(e) => {
                                audit(format_args!("master key from {peer}: {e}"));
                                Message::Error {
                                    message: e.to_string(),
                                }
                            }
                        }
                    }
                    None => Message::Error {
                        message: "refused: a master key before evidence on this connection".into(),
                    },
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
    let tee = server.vault.tee();
    let note = tee
        .identity()
        .map(|i| format!(", INSECURE simulation: not a TEE; {i}"))
        .unwrap_or_default();
    // The one line on stdout (tests and the demo read the address from it); a closed
    // stdout is an error, not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "sealdb-vault listening on {bound} (tee: {:?}{note}){socket_note}; owner {}",
        tee.format(),
        hex_of(server.vault.owner())
    )
    .and_then(|()| out.flush())
    .map_err(ProtoError::Io)?;
    drop(out);
    server.run();
    Ok(())
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

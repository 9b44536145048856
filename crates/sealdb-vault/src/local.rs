//! The engine's local socket: a Unix socket, owner-only, serving peers of the vault's own
//! user id.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sealdb_vault_proto::{read_message, write_message, Deadline, Message, ProtoError};

use crate::{Vault, VaultError};

/// Engine connections served at once.
const MAX_ENGINES: usize = 64;
/// How long an engine connection may wait for (and send) its next request.
const ENGINE_IDLE: Duration = Duration::from_secs(60);
/// How long the engine may take to read a reply.
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// A bound engine socket.
#[derive(Debug)]
pub struct LocalServer {
    listener: UnixListener,
    path: PathBuf,
    vault: Arc<Vault>,
    idle: Duration,
}

impl LocalServer {
    /// Binds `path` (a stale socket file there is replaced) and makes it owner-only.
    pub fn bind(path: &Path, vault: Arc<Vault>) -> Result<LocalServer, VaultError> {
        let err = |what: &str, e: std::io::Error| {
            VaultError::Config(format!("{what} {}: {e}", path.display()))
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(VaultError::Config(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            // Only a socket nobody listens on is stale. Any other failure to connect (no
            // permission: another user's socket) leaves it alone.
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(VaultError::Config(format!(
                        "another vault is serving {}",
                        path.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(err("cannot tell whether a vault serves", e)),
            }
            std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?;
        }
        // Bound inside a private directory (0700) beside the path, made owner-only there,
        // then moved into place: there is no moment another user could connect.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let private = tempfile::Builder::new()
            .prefix(".sealdb-vault-")
            .tempdir_in(parent)
            .map_err(|e| err("creating a private directory beside", e))?;
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err("securing a private directory beside", e))?;
        let staged = private.path().join("socket");
        let listener = UnixListener::bind(&staged).map_err(|e| err("cannot listen on", e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err("setting permissions of", e))?;
        std::fs::rename(&staged, path).map_err(|e| err("moving the socket to", e))?;
        Ok(LocalServer {
            listener,
            path: path.to_path_buf(),
            vault,
            idle: ENGINE_IDLE,
        })
    }

    /// How long a connection may wait for (and send) its next request before the vault
    /// closes it; 60 s unless set. The client reconnects after such a close.
    pub fn with_idle_limit(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves engine connections until the process ends (at most 64 at once).
    pub fn run(self) {
        let me = rustix::process::geteuid();
        let (vault, idle) = (self.vault, self.idle);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(_) => {
                    crate::server::accept_backoff();
                    continue;
                }
            };
            // Only processes of the vault's own user: the socket's mode already says so,
            // the peer's credentials make sure.
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if cred.uid == me => {}
                _ => {
                    crate::server::audit(format_args!(
                        "engine socket: a peer of another user refused"
                    ));
                    continue;
                }
            }
            let vault = vault.clone();
            let accepted = crate::server::spawn_bounded(&running, MAX_ENGINES, move || {
                let _ = serve_engine(stream, &vault, idle);
            });
            if !accepted {
                crate::server::audit(format_args!(
                    "engine socket: too many connections; one refused"
                ));
            }
        }
    }
}

fn serve_engine(stream: UnixStream, vault: &Vault, idle: Duration) -> Result<(), ProtoError> {
    let mut stream = Deadline::new(stream, idle);
    loop {
        // A request must arrive whole within `idle` (an idle engine's connection is closed;
        // its client reconnects), and the reply must be taken within REPLY_DEADLINE.
        stream.renew(idle);
        let request = match read_message(&mut stream) {
            Ok(m) => m,
            Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            // A timeout or a broken connection gets no answer: a reply nobody asked for
            // could be read as the answer to a request sent just before the close.
            Err(e @ ProtoError::Io(_)) => return Err(e),
            Err(e) => {
                let _ = write_message(
                    &mut stream,
                    &Message::Error {
                        message: e.to_string(),
                    },
                );
                return Err(e);
            }
        };
        let reply = vault.engine_request(request);
        stream.renew(REPLY_DEADLINE);
        write_message(&mut stream, &reply)?;
    }
}

//! A deadline for a whole exchange on a socket, not for each read or write: a peer that
//! sends one byte just before each per-call timeout cannot stretch an exchange without end.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A socket whose read and write timeouts can be set (TCP and Unix sockets).
pub trait SocketTimeouts {
    /// Sets the read timeout.
    fn read_timeout(&self, timeout: Duration) -> std::io::Result<()>;
    /// Sets the write timeout.
    fn write_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

/// std's socket types have the same two setters but no trait for them.
macro_rules! socket_timeouts {
    ($($t:ty),*) => {$(
        impl SocketTimeouts for $t {
            fn read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
                self.set_read_timeout(Some(timeout))
            }
            fn write_timeout(&self, timeout: Duration) -> std::io::Result<()> {
                self.set_write_timeout(Some(timeout))
            }
        }
    )*};
}

socket_timeouts!(TcpStream, UnixStream);

/// A socket whose reads and writes fail with [`ErrorKind::TimedOut`] once its deadline has
/// passed, however slowly the peer sends: before each read (write) the socket's read (write)
/// timeout is set to the time left.
#[derive(Debug)]
pub struct Deadline<S> {
    socket: S,
    until: Instant,
}

impl<S: SocketTimeouts> Deadline<S> {
    /// `socket`, with everything done on it to be done within `within` from now.
    pub fn new(socket: S, within: Duration) -> Self {
        Deadline {
            socket,
            until: Instant::now() + within,
        }
    }

    /// Moves the deadline to `within` from now (for the next exchange on the connection).
    pub fn renew(&mut self, within: Duration) {
        self.until = Instant::now() + within;
    }

    /// Moves the deadline to `within` from `start`.
    pub fn set_from(&mut self, start: Instant, within: Duration) {
        self.until = start + within;
    }

    /// The time left, or `TimedOut` once the deadline has passed.
    fn left(&self) -> std::io::Result<Duration> {
        self.until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ErrorKind::TimedOut.into())
    }
}

impl<S: SocketTimeouts + Read> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.read_timeout(self.left()?)?;
        self.socket.read(buf)
    }
}

impl<S: SocketTimeouts + Write> Write for Deadline<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.socket.write_timeout(self.left()?)?;
        self.socket.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.socket.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends one byte every 30 ms, forever, is cut off at the deadline although
    /// no single read waits long.
    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline() {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..200 {
                if peer.write_all(&[1]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        let mut d = Deadline::new(ours, Duration::from_millis(300));
        // 1 KiB never arrives: without the deadline the read would end only when the peer
        // stops, with UnexpectedEof after its 200 bytes.
        let mut buf = [0u8; 1 << 10];
        let err = d.read_exact(&mut buf).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "{err:?}"
        );
        d.renew(Duration::from_secs(5));
        assert!(
            d.read(&mut buf[..1]).is_ok(),
            "a renewed deadline reads again"
        );
        drop(d);
        trickle.join().unwrap();
    }
}

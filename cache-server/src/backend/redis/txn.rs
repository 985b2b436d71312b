//! A connection of its own for batches of Sets, each written as one transaction in one buffer.
//!
//! A batch of Sets is `MULTI`, one `MSET` of the values, the keys-only bookkeeping script, `EXEC`: the
//! values never become Lua strings (Redis' Lua hashes every byte of every string a script is handed). Through
//! fred the same four commands cost a socket flush and fred's per-command work each, which ate the gain
//! (docs/decisions/0001); here they are one write and one read, on a connection that only the batch holding
//! the Set lane uses, so no task stands between the caller and the socket. Commands and replies are RESP2,
//! encoded and decoded with `redis-protocol` (the codec fred itself uses).
//!
//! The connection is opened on first use and after any failure, to the primary fred is connected to (so it
//! follows a Sentinel failover), over TLS when Redis is; each opening authenticates, selects the database
//! and loads the script. A call that fails or is cancelled drops its connection: a half-read answer must never
//! be read by the next batch.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf as _, BytesMut};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// A failure of the connection itself (not an error reply).
#[derive(Debug, thiserror::Error)]
pub(super) enum TxnError {
    /// Connecting, writing or reading failed, or Redis closed the connection.
    #[error("set connection: {0}")]
    Io(#[from] std::io::Error),
    /// Redis answered something that is not RESP2.
    #[error("set connection: protocol error: {0}")]
    Protocol(#[from] redis_protocol::error::RedisProtocolError),
    /// The handshake was refused (`AUTH`, `SELECT`, `SCRIPT LOAD`): Redis' error line.
    #[error("{0}")]
    Handshake(String),
    /// fred has no connection to learn the primary's address from.
    #[error("set connection: no primary known")]
    NoPrimary,
}

/// Commands encoded as RESP2 arrays of bulk strings, back to back in one buffer.
#[derive(Debug, Default)]
pub(super) struct Commands {
    buf: BytesMut,
    count: usize,
}

impl Commands {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
            count: 0,
        }
    }

    /// Appends one command, its name first.
    pub fn push(&mut self, args: &[&[u8]]) {
        let frames: Vec<BorrowedFrame<'_>> =
            args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
        // Encoding into a growable buffer only fails on frames that cannot be encoded; bulk strings can.
        let _ = extend_encode_borrowed(&mut self.buf, &BorrowedFrame::Array(&frames), false);
        self.count += 1;
    }

    /// How many commands are in the buffer.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Where the connection goes and how it introduces itself.
#[derive(Clone)]
pub(super) struct Target {
    /// The primary's address, asked of fred at each opening.
    pub primary: Arc<dyn Fn() -> Option<(String, u16)> + Send + Sync>,
    /// TLS, with the server name checked against the primary's host.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// ACL username, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// Database to `SELECT`.
    pub database: Option<u8>,
    /// Script loaded at each connect, so that `EVALSHA` finds it.
    pub script: &'static str,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The Set batches' connection (see the module's documentation).
pub(super) struct TxnConnection {
    target: Target,
    /// The open connection, when no batch holds it.
    idle: Mutex<Option<Box<dyn Stream>>>,
}

impl fmt::Debug for TxnConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxnConnection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl TxnConnection {
    /// A connection to `target`, opened on first use.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            idle: Mutex::new(None),
        }
    }

    /// Drops the open connection (after a failover, say): the next batch opens a fresh one.
    pub async fn reset(&self) {
        *self.idle.lock().await = None;
    }

    /// Writes `commands` in one write and reads one reply per command. Cancel-safe: a call that does not
    /// finish drops its connection.
    ///
    /// A kept connection that Redis closed while it sat idle (a restart, its `timeout` setting) fails before
    /// any answer comes back: the call then goes once more on a fresh connection, as fred's pool reconnects
    /// before sending. Nothing ran on the closed one.
    pub async fn send(&self, commands: &Commands) -> Result<Vec<OwnedFrame>, TxnError> {
        let mut idle = self.idle.lock().await;
        let mut buf = BytesMut::with_capacity(256);
        if let Some(mut stream) = idle.take() {
            match exchange(&mut stream, &mut buf, commands).await {
                Ok(replies) => {
                    *idle = Some(stream);
                    return Ok(replies);
                }
                Err((TxnError::Io(_), false)) => buf.clear(),
                Err((e, _)) => return Err(e),
            }
        }
        let mut stream = self.open().await?;
        let replies = exchange(&mut stream, &mut buf, commands)
            .await
            .map_err(|(e, _)| e)?;
        *idle = Some(stream);
        Ok(replies)
    }

    async fn open(&self) -> Result<Box<dyn Stream>, TxnError> {
        let (host, port) = (self.target.primary)().ok_or(TxnError::NoPrimary)?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Stream> = match &self.target.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Box::new(tls.connect(name, tcp).await?)
            }
            None => Box::new(tcp),
        };
        let mut hello = Commands::with_capacity(self.target.script.len() + 128);
        if let Some(password) = &self.target.password {
            match &self.target.username {
                Some(user) => hello.push(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => hello.push(&[b"AUTH", password.as_bytes()]),
            }
        }
        if let Some(db) = self.target.database.filter(|db| *db != 0) {
            hello.push(&[b"SELECT", db.to_string().as_bytes()]);
        }
        hello.push(&[b"SCRIPT", b"LOAD", self.target.script.as_bytes()]);
        let mut buf = BytesMut::with_capacity(256);
        for reply in exchange(&mut stream, &mut buf, &hello)
            .await
            .map_err(|(e, _)| e)?
        {
            if let OwnedFrame::Error(e) = reply {
                return Err(TxnError::Handshake(e));
            }
        }
        Ok(stream)
    }
}

/// Writes the commands and reads their replies. On failure, also tells whether any reply byte had come
/// back.
async fn exchange(
    stream: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    commands: &Commands,
) -> Result<Vec<OwnedFrame>, (TxnError, bool)> {
    stream
        .write_all(&commands.buf)
        .await
        .map_err(|e| (TxnError::Io(e), false))?;
    stream.flush().await.map_err(|e| (TxnError::Io(e), false))?;
    let mut replies = Vec::with_capacity(commands.count());
    let mut received = false;
    while replies.len() < commands.count() {
        match decode(buf).map_err(|e| (TxnError::Protocol(e), true))? {
            Some((reply, len)) => {
                buf.advance(len);
                replies.push(reply);
            }
            None => match stream.read_buf(buf).await {
                Ok(0) => {
                    let closed = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    );
                    return Err((TxnError::Io(closed), received));
                }
                Ok(_) => received = true,
                Err(e) => return Err((TxnError::Io(e), received)),
            },
        }
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut c = Commands::default();
        c.push(&[b"MULTI"]);
        c.push(&[b"SET", b"k", b"-42"]);
        assert_eq!(
            &c.buf[..],
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n-42\r\n"
        );
        assert_eq!(c.count(), 2);
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let whole = b"*2\r\n+OK\r\n:1\r\n";
        let (frame, len) = decode(whole).unwrap().unwrap();
        assert_eq!(len, whole.len());
        assert_eq!(
            frame,
            OwnedFrame::Array(vec![
                OwnedFrame::SimpleString(b"OK".to_vec()),
                OwnedFrame::Integer(1)
            ])
        );
        assert!(decode(&whole[..whole.len() - 1]).unwrap().is_none());
    }
}

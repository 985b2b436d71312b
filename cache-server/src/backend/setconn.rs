//! A connection of its own for batches of Sets, each written as one transaction in one buffer.
//!
//! A batch of Sets is `MULTI`, one `MSET` of the values, the keys-only bookkeeping script (TTLs, read
//! counters, index members), `EXEC`. The values never become Lua strings: Redis' Lua hashes every byte of
//! every string a script is handed, ~14k of the ~47k instructions a 1 KiB Set cost Redis in the batch script
//! (`scripts/redis-set-cost`). Through fred the same four commands cost a flush each (Redis read four times
//! per batch) and fred's per-command work four times, which ate the gain; here they are one write and one
//! read, on a connection that only the batch holding the Set lane uses (one Set batch is out at a time), so
//! no task stands between the caller and the socket.
//!
//! Plain TCP only: with TLS the Set batches keep to the batch script on fred's pool. A connection is
//! opened on first use and after any failure; each opening authenticates, selects the database and loads
//! the script. A call that fails or is cancelled drops its connection (a half-read answer must never be
//! read by the next batch).

use std::fmt;
use std::io::Write as _;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// One RESP2 reply, with what the Set batches read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+QUEUED`.
    Status(String),
    /// `-ERR ...`: the whole line after the dash.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` (its bytes are not kept) or the null bulk string.
    Bulk,
    /// `*n`, or `None` for the null array (`EXEC` of a transaction aborted by `WATCH`).
    Array(Option<Vec<Reply>>),
}

/// A failure of the connection itself (not an error reply).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Connecting, writing or reading failed, or Redis closed the connection.
    #[error("set connection: {0}")]
    Io(std::io::Error),
    /// Redis answered something that is not RESP2.
    #[error("set connection: protocol error: {0}")]
    Protocol(String),
    /// The handshake was refused (`AUTH`, `SELECT`, `SCRIPT LOAD`): Redis' error line.
    #[error("{0}")]
    Handshake(String),
}

/// Commands encoded as RESP2 arrays of bulk strings, back to back in one buffer.
#[derive(Debug, Default)]
pub struct Commands {
    buf: Vec<u8>,
    count: usize,
}

impl Commands {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            count: 0,
        }
    }

    /// Starts a command of `args` arguments (its name included); push them with [`Commands::arg`].
    pub fn command(&mut self, args: usize) -> &mut Self {
        self.count += 1;
        let _ = write!(self.buf, "*{args}\r\n");
        self
    }

    /// One argument.
    pub fn arg(&mut self, arg: &[u8]) -> &mut Self {
        let _ = write!(self.buf, "${}\r\n", arg.len());
        self.buf.extend_from_slice(arg);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// An integer argument, as its decimal digits.
    pub fn int(&mut self, n: i64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut cursor = std::io::Cursor::new(&mut digits[..]);
        let _ = write!(cursor, "{n}");
        let len = cursor.position() as usize;
        self.arg(&digits[..len])
    }

    /// How many commands the buffer holds: how many replies it will get.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Parses one reply at the start of `buf`: `Ok(None)` if it is not complete yet, else the reply and its
/// length in bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ConnError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (&kind, line) = buf[..eol]
        .split_first()
        .ok_or_else(|| ConnError::Protocol("empty line".to_owned()))?;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, ConnError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ConnError::Protocol(format!("bad length or integer {:?}", text())))
    };
    let next = eol + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => Ok(Some((Reply::Integer(number()?), next))),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk, next)));
            }
            let end = next + n as usize + 2;
            Ok((buf.len() >= end).then_some((Reply::Bulk, end)))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut at = next;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((item, len)) => {
                        items.push(item);
                        at += len;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(ConnError::Protocol(format!(
            "unexpected reply type {:?}",
            other as char
        ))),
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// ACL user, if any (with `password`).
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
        f.debug_struct("Target").field("addr", &self.addr).finish()
    }
}

/// The Set batches' connection (see the module's documentation).
#[derive(Debug)]
pub struct SetConnection {
    target: Target,
    /// The open connection, when no batch holds it.
    idle: Mutex<Option<TcpStream>>,
}

impl SetConnection {
    /// A connection to `target`, opened on first use.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            idle: Mutex::new(None),
        }
    }

    /// Writes `commands` in one write and reads one reply per command. Cancel-safe: a call that does not
    /// finish drops its connection.
    ///
    /// A kept connection that Redis closed while it sat idle (a restart, its `timeout` setting) fails before
    /// any answer comes back: the call then goes once more on a fresh connection, as fred's pool reconnects
    /// before sending. Nothing ran on the closed one; and a batch's transaction is idempotent anyway (the same
    /// values, TTLs and index members).
    pub async fn send(&self, commands: &Commands) -> Result<Vec<Reply>, ConnError> {
        let mut idle = self.idle.lock().await;
        let mut buf = BytesMut::with_capacity(256);
        if let Some(mut stream) = idle.take() {
            match exchange(&mut stream, &mut buf, commands).await {
                Ok(replies) => {
                    *idle = Some(stream);
                    return Ok(replies);
                }
                Err((ConnError::Io(_), false)) => buf.clear(),
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

    async fn open(&self) -> Result<TcpStream, ConnError> {
        let mut stream = TcpStream::connect(&self.target.addr)
            .await
            .map_err(ConnError::Io)?;
        stream.set_nodelay(true).map_err(ConnError::Io)?;
        let mut hello = Commands::with_capacity(self.target.script.len() + 128);
        if let Some(password) = &self.target.password {
            match &self.target.username {
                Some(user) => hello
                    .command(3)
                    .arg(b"AUTH")
                    .arg(user.as_bytes())
                    .arg(password.as_bytes()),
                None => hello.command(2).arg(b"AUTH").arg(password.as_bytes()),
            };
        }
        if let Some(db) = self.target.database.filter(|db| *db != 0) {
            hello.command(2).arg(b"SELECT").int(i64::from(db));
        }
        hello
            .command(3)
            .arg(b"SCRIPT")
            .arg(b"LOAD")
            .arg(self.target.script.as_bytes());
        let mut buf = BytesMut::with_capacity(256);
        for reply in exchange(&mut stream, &mut buf, &hello)
            .await
            .map_err(|(e, _)| e)?
        {
            if let Reply::Error(e) = reply {
                return Err(ConnError::Handshake(e));
            }
        }
        Ok(stream)
    }
}

/// Writes the commands and reads their replies. On failure, also tells whether any reply byte had come
/// back.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    commands: &Commands,
) -> Result<Vec<Reply>, (ConnError, bool)> {
    stream
        .write_all(&commands.buf)
        .await
        .map_err(|e| (ConnError::Io(e), false))?;
    let mut replies = Vec::with_capacity(commands.count());
    let mut received = false;
    while replies.len() < commands.count() {
        match parse(buf).map_err(|e| (e, true))? {
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
                    return Err((ConnError::Io(closed), received));
                }
                Ok(_) => received = true,
                Err(e) => return Err((ConnError::Io(e), received)),
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
        c.command(1).arg(b"MULTI");
        c.command(3).arg(b"SET").arg(b"k").int(-42);
        assert_eq!(c.count(), 2);
        assert_eq!(
            c.buf,
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n-42\r\n"
        );
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let exec = b"*3\r\n+OK\r\n:1\r\n-NOSCRIPT No matching script.\r\n";
        let want = Reply::Array(Some(vec![
            Reply::Status("OK".into()),
            Reply::Integer(1),
            Reply::Error("NOSCRIPT No matching script.".into()),
        ]));
        assert_eq!(parse(exec).unwrap(), Some((want, exec.len())));
        // Any prefix is incomplete, never a wrong reply.
        for cut in 0..exec.len() {
            assert_eq!(parse(&exec[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
        assert_eq!(
            parse(b"$3\r\nabc\r\n+OK\r\n").unwrap(),
            Some((Reply::Bulk, 9))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk, 5)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Reply::Array(None), 5)));
        assert!(parse(b"?what\r\n").is_err());
    }
}

//! A loopback TCP proxy that partitions its clients from their target on demand, and can point new
//! connections at another target (a failover address that moves).

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Accepts connections, but forwards nothing either way until healed: a partition (the peers see a
    /// hang, not a reset); what was in flight arrives after it, as TCP retransmits it.
    Blackhole,
}

struct Shared {
    target: Mutex<SocketAddr>,
    mode: watch::Sender<Mode>,
    /// Bumped to close every open connection.
    generation: watch::Sender<u64>,
}

/// See the module's documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            mode: watch::Sender::new(Mode::Pass),
            generation: watch::Sender::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let s = s.clone();
                connections.spawn(async move {
                    let target = *s.target.lock().expect("proxy target lock");
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut closed = s.generation.subscribe();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, s.mode.subscribe());
                    let down = pump(sr, cw, s.mode.subscribe());
                    tokio::select! {
                        () = async { tokio::join!(up, down); } => {}
                        _ = closed.changed() => {}
                    }
                });
            }
        });
        FaultProxy { addr, shared, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://<proxy address>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Partitions (blackhole) or heals (pass) every connection, open or new.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Points new connections at `target` and closes the open ones (a failover address moving).
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("proxy target lock") = target;
        self.reset();
    }

    /// Closes every open connection.
    pub fn reset(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

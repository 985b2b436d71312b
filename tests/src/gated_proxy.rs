//! A loopback TCP proxy that can hold traffic mid-call ([`GatedProxy`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One direction of a [`GatedProxy`]: how many bytes it may forward, and how many it did.
#[derive(Debug)]
struct Gate {
    /// `Some(n)`: forward at most `n` bytes in total (over all connections), then hold. `None`: open.
    limit: watch::Sender<Option<u64>>,
    forwarded: AtomicU64,
    /// Whether some connection is holding bytes back because of the limit.
    held: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Self {
        Self {
            limit: watch::Sender::new(None),
            forwarded: AtomicU64::new(0),
            held: watch::Sender::new(false),
        }
    }
}

/// A loopback TCP proxy to a target address that can stop forwarding one direction after a number of bytes
/// and resume later, to hold a call in flight at a known point (e.g. while the server shuts down).
#[derive(Debug)]
pub struct GatedProxy {
    addr: SocketAddr,
    upstream: Arc<Gate>,
    downstream: Arc<Gate>,
    task: JoinHandle<()>,
}

impl GatedProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding every connection to `target`.
    pub async fn start(target: SocketAddr) -> GatedProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let upstream = Arc::new(Gate::new());
        let downstream = Arc::new(Gate::new());
        let (up, down) = (upstream.clone(), downstream.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection's pumps.
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, up.clone()));
                pumps.spawn(pump(server_read, client_write, down.clone()));
            }
        });
        GatedProxy {
            addr,
            upstream,
            downstream,
            task,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Client→server bytes forwarded so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream.forwarded.load(Ordering::SeqCst)
    }

    /// Server→client bytes forwarded so far.
    pub fn downstream_bytes(&self) -> u64 {
        self.downstream.forwarded.load(Ordering::SeqCst)
    }

    /// From now on, forward at most `bytes` more client→server bytes, then hold the rest.
    pub fn hold_upstream_after(&self, bytes: u64) {
        let total = self.upstream_bytes() + bytes;
        self.upstream.limit.send_replace(Some(total));
    }

    /// From now on, forward at most `bytes` more server→client bytes, then hold the rest.
    pub fn hold_downstream_after(&self, bytes: u64) {
        let total = self.downstream_bytes() + bytes;
        self.downstream.limit.send_replace(Some(total));
    }

    /// Waits until some direction holds bytes back.
    ///
    /// # Panics
    /// If nothing is held within `timeout`.
    pub async fn wait_held(&self, timeout: Duration) {
        let mut up = self.upstream.held.subscribe();
        let mut down = self.downstream.held.subscribe();
        let held = async {
            tokio::select! {
                r = up.wait_for(|h| *h) => { r.expect("gate alive"); }
                r = down.wait_for(|h| *h) => { r.expect("gate alive"); }
            }
        };
        tokio::time::timeout(timeout, held)
            .await
            .unwrap_or_else(|_| panic!("proxy held nothing within {timeout:?}"));
    }

    /// Opens both directions: everything held is forwarded and nothing is held any more.
    pub fn release(&self) {
        for gate in [&self.upstream, &self.downstream] {
            gate.held.send_replace(false);
            gate.limit.send_replace(None);
        }
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: Arc<Gate>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut limit = gate.limit.subscribe();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0;
        while off < n {
            let allowed = match *limit.borrow_and_update() {
                None => n - off,
                Some(max) => {
                    let left = max.saturating_sub(gate.forwarded.load(Ordering::SeqCst));
                    usize::try_from(left).unwrap_or(usize::MAX).min(n - off)
                }
            };
            if allowed == 0 {
                gate.held.send_replace(true);
                if limit.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if to.write_all(&buf[off..off + allowed]).await.is_err() {
                return;
            }
            gate.forwarded.fetch_add(allowed as u64, Ordering::SeqCst);
            off += allowed;
        }
    }
    let _ = to.shutdown().await;
}

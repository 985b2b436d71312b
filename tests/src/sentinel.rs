//! A Redis Sentinel topology on loopback ports: one primary, its replicas, and a Sentinel watching them
//! (quorum 1, a node is down after 1 s).

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{READY_TIMEOUT, RedisServer, free_port};

/// The service name Sentinel monitors.
pub const SERVICE: &str = "mymaster";

/// See the module's documentation.
#[derive(Debug)]
pub struct Sentinel {
    /// Every data node, primary and replicas (roles change with failovers).
    pub nodes: Vec<RedisServer>,
    port: u16,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a primary, `replicas` replicas of it (synchronised before this returns) and a Sentinel.
    ///
    /// # Panics
    /// If a process does not come up.
    pub async fn start(replicas: usize) -> Sentinel {
        let primary = RedisServer::start().await;
        let mut nodes = vec![primary];
        for _ in 0..replicas {
            let replica = RedisServer::builder()
                .args(["--replicaof", "127.0.0.1", &nodes[0].port().to_string()])
                .start()
                .await;
            nodes.push(replica);
        }
        let dir = tempfile::tempdir().expect("sentinel dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 3000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.path().display(),
                primary = nodes[0].port()
            ),
        )
        .expect("write sentinel.conf");
        let child = tokio::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server --sentinel (apt-get install redis-server)");
        let sentinel = Sentinel {
            nodes,
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while sentinel.primary_port().is_none() {
            assert!(Instant::now() < deadline, "sentinel did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sentinel.wait_synced().await;
        sentinel
    }

    /// `redis-sentinel://127.0.0.1:<sentinel port>/0?sentinelServiceName=mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}",
            self.port
        )
    }

    /// The Sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The primary's port, as Sentinel names it.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", SERVICE])?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// The node that is the primary now.
    ///
    /// # Panics
    /// If Sentinel names no node of this topology.
    pub fn primary(&self) -> &RedisServer {
        let port = self.primary_port().expect("sentinel names a primary");
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("the primary is one of the nodes")
    }

    /// Index in [`Sentinel::nodes`] of the primary now.
    pub fn primary_index(&self) -> usize {
        let port = self.primary_port().expect("sentinel names a primary");
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .expect("the primary is one of the nodes")
    }

    /// Waits until every replica reports a finished synchronisation with the primary.
    pub async fn wait_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let primary = self.primary_port();
        for node in &self.nodes {
            if Some(node.port()) == primary {
                continue;
            }
            loop {
                let info = node.cli(["INFO", "replication"]);
                if info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica did not sync: {info}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Waits until the primary has `n` replicas online (a demoted primary takes Sentinel ~10 s to turn into
    /// a replica; the others follow the new primary at once).
    pub async fn wait_online_replicas(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info = self.primary().cli(["INFO", "replication"]);
            let online = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if online >= n {
                return;
            }
            assert!(Instant::now() < deadline, "replicas not online: {info}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks Sentinel for a failover now (no node is killed: the old primary becomes a replica).
    ///
    /// # Panics
    /// If Sentinel refuses.
    pub fn failover(&self) {
        let out = self
            .cli(&["SENTINEL", "failover", SERVICE])
            .expect("sentinel answers");
        assert!(out.starts_with("OK"), "sentinel failover: {out}");
    }

    /// Waits until Sentinel names a primary other than `old` (port); returns it and when it did.
    ///
    /// # Panics
    /// If it does not within `within`.
    pub async fn wait_promoted(&self, old: u16, within: Duration) -> (u16, Instant) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.primary_port()
                && port != old
            {
                return (port, Instant::now());
            }
            assert!(Instant::now() < deadline, "no failover within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

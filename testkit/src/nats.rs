//! Real nats-servers with JetStream for tests, on free ports, with their
//! stores in temporary directories; dropping one kills it and removes its
//! store.
//!
//! - [`NatsServer::start`]: one plain server; [`NatsServer::start_with`] adds
//!   configuration (`authorization { token: ... }`, `tls { ... }`).
//! - [`NatsCluster::start`]: three servers routed into one JetStream cluster,
//!   for replicated streams; any node can be killed and restarted.
//!
//! `stop` and `start_again` simulate an outage on the same port and store.
//! `NATS_SERVER_BIN` picks another binary (e.g. a 2.10 extracted from
//! Debian trixie).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    /// `nats-server -c` file (None: plain command-line flags).
    config: Option<PathBuf>,
    child: Option<Child>,
    scheme: &'static str,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free loopback port. Panics with a clear
    /// message when nats-server is not installed (`deploy/test.sh` installs it).
    pub fn start() -> Self {
        let mut server = Self { port: free_port(), store: temp_store(), config: None, child: None, scheme: "nats" };
        server.spawn();
        server
    }

    /// Starts a server whose configuration file has `extra` added (an
    /// `authorization` or `tls` block); `tls` makes [`Self::url`] `tls://`.
    pub fn start_with(extra: &str, tls: bool) -> Self {
        let store = temp_store();
        let port = free_port();
        let config = store.path().join("server.conf");
        let text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{extra}\n",
            store.path().join("js").display().to_string()
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("cannot write the nats-server config: {e}"));
        let scheme = if tls { "tls" } else { "nats" };
        let mut server = Self { port, store, config: Some(config), child: None, scheme };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (the store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        match &self.config {
            Some(config) => cmd.arg("-c").arg(config),
            None => cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"]).arg(self.store.path()),
        };
        self.child = Some(spawn(cmd));
        wait_listening(self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three nats-servers in one JetStream cluster on loopback.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

struct Node {
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three routed servers (`n1`..`n3`, cluster `smsgate-test`) and
    /// waits until JetStream has a meta leader.
    pub fn start() -> Self {
        let dir = temp_store();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, r)| format!("nats-route://127.0.0.1:{r}")).collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{}", i + 1));
            let config = dir.path().join(format!("n{}.conf", i + 1));
            let text = format!(
                "server_name: n{n}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: smsgate-test, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
                n = i + 1,
                store = store.display().to_string(),
                routes = routes.join(", "),
            );
            std::fs::write(&config, text).unwrap_or_else(|e| panic!("cannot write a cluster config: {e}"));
            nodes.push(Node { port: *port, config, child: None });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    /// Every node's URL, comma-separated (what `SMSGATE_NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s URL alone.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// SIGKILLs node `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its port and store; it rejoins the cluster.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    fn spawn(&mut self, i: usize) {
        let mut cmd = Command::new(binary());
        cmd.arg("-c").arg(&self.nodes[i].config);
        self.nodes[i].child = Some(spawn(cmd));
        wait_listening(self.nodes[i].port);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned())
}

fn temp_store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("smsgate-nats-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary JetStream store: {e}"))
}

fn spawn(mut cmd: Command) -> Child {
    // Set SMSGATE_TEST_NATS_LOGS to see what the servers say.
    let logs = std::env::var_os("SMSGATE_TEST_NATS_LOGS").is_some();
    let out = || if logs { Stdio::inherit() } else { Stdio::null() };
    cmd.stdout(out())
        .stderr(out())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} (install it: apt-get install -y nats-server): {e}", binary()))
}

fn wait_listening(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {addr} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

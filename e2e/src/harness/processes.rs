//! The service processes of a [`Stack`]: start, wait until ready, kill,
//! restart, add replicas; NATS stopped, started and its nodes killed; the
//! services' logs.

use anyhow::{Context as _, bail};
use smsgate_testkit::nats::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use super::*;

/// A service process of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Ingress,
    /// The n-th worker (0 is started by [`Stack::start`]).
    Worker(usize),
    /// The n-th sender (0 is started by [`Stack::start`]).
    Sender(usize),
}

impl Service {
    pub(super) fn binary(self) -> &'static str {
        match self {
            Service::Ingress => "smsgate-ingress",
            Service::Worker(_) => "smsgate-worker",
            Service::Sender(_) => "smsgate-sender",
        }
    }

    pub(super) fn label(self) -> String {
        match self {
            Service::Ingress => "ingress".to_owned(),
            Service::Worker(n) => format!("worker-{n}"),
            Service::Sender(n) => format!("sender-{n}"),
        }
    }
}

/// One service: its ports, log file, and the running child (if any).
pub(super) struct Proc {
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Where readiness is polled.
    ready_url: String,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("==== e2e stack {} failed; service logs (last 40 lines each):", self.config.name);
            eprintln!("{}", self.log_tails(40));
            // The temporary directory goes; the whole logs are kept for a post-mortem.
            let kept = std::env::temp_dir().join(format!("smsgate-e2e-failed-{}", self.prefix));
            if std::fs::create_dir_all(&kept).is_ok() {
                for proc in self.procs.values() {
                    if let Some(name) = proc.log.file_name() {
                        let _ = std::fs::copy(&proc.log, kept.join(name));
                    }
                }
                eprintln!("==== full logs kept in {}", kept.display());
            }
        }
        // The NATS server and the stubs stop in their own Drop.
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Stack {
    /// Whether the service's process has exited (it is then forgotten).
    pub(super) fn exited(&mut self, service: Service) -> bool {
        let Some(proc) = self.procs.get_mut(&service) else { return false };
        let gone = proc.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some());
        if gone {
            proc.child = None;
        }
        gone
    }

    /// Defines a worker or sender on a fresh ops port and starts it,
    /// retrying with another port if it exits during start-up.
    pub(super) async fn start_fresh(&mut self, service: Service, bins: &binaries::Binaries) -> anyhow::Result<()> {
        for attempt in 1..=3 {
            self.define_next(service, bins);
            match self.restart(service).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 && self.exited(service) => {
                    eprintln!("e2e harness: {} did not start ({e:#}); trying another port", service.label());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) fn define(
        &mut self,
        service: Service,
        env: Vec<(String, String)>,
        ready_url: String,
        bins: &binaries::Binaries,
    ) {
        let binary = bins.path(service.binary());
        let log = self.dir.path().join(format!("{}.log", service.label()));
        self.procs.insert(service, Proc { binary, env, ready_url, log, child: None, starts: 0 });
    }

    /// Defines a worker or sender with its own ops port.
    pub(super) fn define_next(&mut self, service: Service, bins: &binaries::Binaries) {
        let channels = self.dir.path().join("channels.json");
        let mut env = self.common_env(&channels);
        let port = free_port();
        let key = match service {
            Service::Worker(_) => "SMSGATE_WORKER_ADDR",
            _ => "SMSGATE_SENDER_ADDR",
        };
        env.push((key.to_owned(), format!("127.0.0.1:{port}")));
        // Not used by workers and senders, but never the defaults (8000/8001).
        env.push(("SMSGATE_INGRESS_ADDR".to_owned(), "127.0.0.1:0".to_owned()));
        env.push(("SMSGATE_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()));
        self.define(service, env, format!("http://127.0.0.1:{port}/api/health"), bins);
    }

    pub(super) fn spawn(&mut self, service: Service) -> anyhow::Result<()> {
        let proc = self.procs.get_mut(&service).with_context(|| format!("{service:?} is not part of the stack"))?;
        if proc.child.is_some() {
            bail!("{service:?} is already running");
        }
        let binary = proc.binary.clone();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&proc.log)?;
        proc.starts += 1;
        use std::io::Write as _;
        writeln!(log, "==== e2e harness: start #{} of {}", proc.starts, service.label())?;
        let child = Command::new(&binary)
            .env_clear()
            .envs(proc.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        proc.child = Some(child);
        Ok(())
    }

    /// Polls the service's health (ingress: readiness) URL until 200.
    pub async fn wait_ready(&mut self, service: Service) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let proc = self.procs.get_mut(&service).context("unknown service")?;
            let url = proc.ready_url.clone();
            if let Some(child) = proc.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited during start-up with {status}; log:\n{}", service.label(), tail(&proc.log, 30));
            }
            let ok = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready within 60 s at {url}", service.label());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs a service (no graceful shutdown: what it held is in flight).
    pub fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let proc = self.procs.get_mut(&service).context("unknown service")?;
        let mut child = proc.child.take().with_context(|| format!("{} is not running", service.label()))?;
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        Ok(())
    }

    /// Starts a killed service again on the same ports and waits until ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        self.spawn(service)?;
        self.wait_ready(service).await
    }

    /// Starts one more worker or sender (`Service::Worker(_)` or
    /// `Service::Sender(_)`; the index is ignored) on the same streams and
    /// returns it once ready.
    pub async fn add(&mut self, kind: Service) -> anyhow::Result<Service> {
        let bins = binaries::locate()?;
        let n = self.procs.keys().filter(|s| std::mem::discriminant(*s) == std::mem::discriminant(&kind)).count();
        let service = match kind {
            Service::Worker(_) => Service::Worker(n),
            Service::Sender(_) => Service::Sender(n),
            Service::Ingress => bail!("there is one ingress"),
        };
        self.start_fresh(service, &bins).await?;
        Ok(service)
    }

    /// Kills nats-server (the store stays): ingress answers 503 meanwhile.
    /// On a cluster, kills every node.
    pub fn stop_nats(&mut self) {
        match &mut self.nats {
            Nats::Single(s) => s.stop(),
            Nats::Cluster(c) => (0..3).for_each(|i| c.kill(i)),
        }
    }

    /// Starts nats-server (every node) again on the same ports and stores.
    pub fn start_nats(&mut self) {
        match &mut self.nats {
            Nats::Single(s) => s.start_again(),
            Nats::Cluster(c) => (0..3).for_each(|i| c.restart(i)),
        }
    }

    /// SIGKILLs node `i` of the cluster (its store stays).
    pub fn kill_nats_node(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Nats::Cluster(c) => {
                c.kill(i);
                Ok(())
            }
            Nats::Single(_) => bail!("this stack runs one nats-server, not a cluster"),
        }
    }

    /// Which cluster node (0-based) leads `stream` now.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let info = self.js.get_stream(stream).await?.info().await?.clone();
        let leader = info.cluster.and_then(|c| c.leader).ok_or_else(|| anyhow::anyhow!("{stream} has no leader"))?;
        // The test kit names the nodes n1, n2, n3.
        leader
            .strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .ok_or_else(|| anyhow::anyhow!("leader {leader:?} is not a test kit node"))
    }

    /// Whether every replica of `stream` is current (none offline or
    /// behind the leader), and what each one reports.
    pub async fn replicas_current(&self, stream: &str) -> anyhow::Result<(bool, String)> {
        let info = self.js.get_stream(stream).await?.info().await?.clone();
        let cluster = info.cluster.ok_or_else(|| anyhow::anyhow!("{stream} has no cluster info"))?;
        let peers: Vec<String> =
            cluster.replicas.iter().map(|p| format!("{} current={} lag={:?}", p.name, p.current, p.lag)).collect();
        let current = cluster.leader.is_some()
            && cluster.replicas.len() + 1 >= info.config.num_replicas
            && cluster.replicas.iter().all(|p| p.current && !p.offline);
        Ok((current, format!("leader {:?}; {}", cluster.leader, peers.join(", "))))
    }

    /// Starts node `i` again; it rejoins the cluster and catches up.
    pub fn restart_nats_node(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Nats::Cluster(c) => {
                c.restart(i);
                Ok(())
            }
            Nats::Single(_) => bail!("this stack runs one nats-server, not a cluster"),
        }
    }

    /// The last `lines` lines of every service's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (service, proc) in &self.procs {
            out.push_str(&format!("---- {} ({})\n{}\n", service.label(), proc.log.display(), tail(&proc.log, lines)));
        }
        out
    }

    /// Every service's whole log (all its runs), by label (`ingress`, `worker-0`, …).
    pub fn logs(&self) -> Vec<(String, String)> {
        self.procs
            .iter()
            .map(|(service, p)| (service.label(), std::fs::read_to_string(&p.log).unwrap_or_default()))
            .collect()
    }

    /// The `/metrics` URL of each worker and sender (ingress serves its
    /// metrics on the admin listener: [`Stack::admin_url`]).
    pub fn metrics_urls(&self) -> Vec<(String, String)> {
        self.procs
            .iter()
            .filter(|(s, _)| !matches!(s, Service::Ingress))
            .map(|(s, p)| (s.label(), p.ready_url.replace("/api/health", "/metrics")))
            .collect()
    }

    /// Counts log lines of `service` (all its runs) containing `needle`.
    pub fn log_count(&self, service: Service, needle: &str) -> usize {
        self.procs
            .get(&service)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .map(|t| t.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }
}

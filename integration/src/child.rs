//! Real nodes as child processes (a unix binary or QEMU running an image), with readiness polling and
//! captured console output. A [`Node`] is killed when dropped.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use janus::{Artifact, Flavor, NodeOpts};

use crate::client::{self, Reply};

/// The directory of a sample service.
pub fn sample_dir(name: &str) -> PathBuf {
    janus::janus_home().join("samples").join(name)
}

/// Builds a sample once per test process and flavour.
pub fn artifact(sample: &str, flavor: Flavor) -> Artifact {
    static CACHE: OnceLock<Mutex<HashMap<(String, Flavor), Artifact>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = guard.get(&(sample.to_string(), flavor)) {
        return a.clone();
    }
    let a = janus::build(&sample_dir(sample), flavor)
        .unwrap_or_else(|e| panic!("janus build {sample} --flavor {flavor} failed: {e:#}"));
    guard.insert((sample.to_string(), flavor), a.clone());
    a
}

/// A free loopback address (bound and released; the race with other processes is accepted).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// A running node.
pub struct Node {
    /// Build flavour.
    pub flavor: Flavor,
    /// Service address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Admin bearer token.
    pub token: String,
    /// Node id.
    pub node_id: String,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// The threads copying the child's stdout and stderr into `output`; finished at end of file.
    pumps: Vec<std::thread::JoinHandle<()>>,
    /// A uk node's admin token file (removed with the node).
    token_file: Option<PathBuf>,
}

impl Node {
    /// Starts a node of `artifact`; listen/admin/token/node id are chosen when `opts` leaves them out.
    /// Returns once the node answers HTTP on both listeners.
    pub fn start(artifact: &Artifact, mut opts: NodeOpts) -> anyhow::Result<Node> {
        let listen = *opts.listen.get_or_insert_with(free_addr);
        let admin = *opts.admin.get_or_insert_with(free_addr);
        let token = match &opts.admin_token {
            Some(t) => t.clone(),
            None => janus::secret::random_token()?,
        };
        opts.admin_token = Some(token.clone());
        let node_id = opts
            .node_id
            .get_or_insert_with(|| format!("{}-{}", artifact.flavor, listen.port()))
            .clone();
        let token_file = (artifact.flavor == Flavor::Uk && opts.admin.is_some()).then(|| {
            let dir = opts.secret_dir.get_or_insert_with(|| {
                std::env::temp_dir().join(format!("janus-it-secrets-{}", std::process::id()))
            });
            janus::flavor::uk::token_file(dir, &node_id, listen.port())
        });
        let mut cmd = janus::launch::command(artifact, &opts)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", artifact.path.display()))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut pumps = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&output);
            pumps.push(std::thread::spawn(move || pump(stream, out)));
        }
        let mut node = Node {
            flavor: artifact.flavor,
            listen,
            admin,
            token,
            node_id,
            child,
            output,
            pumps,
            token_file,
        };
        node.wait_ready(Duration::from_secs(match artifact.flavor {
            Flavor::Unix => 30,
            Flavor::Uk => 120,
        }))?;
        Ok(node)
    }

    /// Polls until the admin `/health` answers 200 and the service listener answers HTTP.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let short = Duration::from_millis(500);
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.settle_output(Instant::now() + short);
                bail!(
                    "node {} exited ({status}) before it was ready; output:\n{}",
                    self.node_id,
                    self.output()
                );
            }
            let auth = format!("Bearer {}", self.token);
            let health = probe(self.admin, "/health", &[("authorization", &auth)], short);
            if health.is_some_and(|r| r.status == 200)
                && probe(self.listen, "/", &[], short).is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not ready after {timeout:?}; output:\n{}",
                    self.node_id,
                    self.output()
                );
            }
            poll_interval();
        }
    }

    /// An admin request with the bearer token.
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Reply> {
        let auth = format!("Bearer {}", self.token);
        client::request(self.admin, method, path, &[("authorization", &auth)], body)
    }

    /// Everything the node printed so far.
    pub fn output(&self) -> String {
        let g = self.output.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&g).into_owned()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with kill(1).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let st = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{sig} {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits for the node to exit, then for its last output to be captured: the process's final lines
    /// are in [`Node::output`] once this returns (the pumps read to end of file, bounded by `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.settle_output(deadline);
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("node {} still running after {timeout:?}", self.node_id);
            }
            poll_interval();
        }
    }

    /// After the process exited: waits (until `deadline`) for the pumps to read its output to the end.
    fn settle_output(&self, deadline: Instant) {
        while !self.pumps.iter().all(|p| p.is_finished()) && Instant::now() < deadline {
            poll_interval();
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(f) = &self.token_file {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn pump(mut s: Box<dyn Read + Send>, out: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&buf[..n]);
    }
}

fn probe(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Option<Reply> {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    client::send_raw(addr, head.as_bytes(), timeout).ok()
}

/// The pause between two readiness polls (polling, not a fixed wait for readiness).
fn poll_interval() {
    std::thread::sleep(Duration::from_millis(50));
}

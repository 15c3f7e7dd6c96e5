//! The supervisor: keeps a cluster's processes (unikernel VMs, process nodes, the router) running.
//!
//! `janus up` writes a plan (`plan.json`: what to run) into the cluster's run directory and starts
//! `janus supervise <run-dir>` detached in its own process group. The supervisor runs one thread per
//! process: start it, pump its console into a ring buffer and a size-capped log file, wait for it to
//! exit, record why (exit status, the panic report and the `JANUS-STATE` dump a unikernel prints before
//! it stops), back off exponentially and start it again. It publishes everything in `state.json`, which
//! `janus ps`, `janus logs`, `janus faults repro` and `janus down` read. SIGTERM stops every process
//! (SIGTERM, then SIGKILL after a grace period) and then the supervisor itself.
//!
//! A stable node of the libvirt engine (`ProcSpec::domain`) is a libvirt domain instead of a child:
//! its thread defines it, follows its lifecycle events (`virsh event --domain`), starts it, follows
//! its console file the same way, records each stop with the same panic report and state dump, starts
//! it again after the backoff, and destroys and undefines it when the supervisor stops.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Lines of console kept in memory per process.
pub const RING_LINES: usize = 2000;
/// A log file is rotated (to `.1`) past this size.
pub const LOG_MAX_BYTES: u64 = 8 << 20;

/// What a process is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A unikernel node in the stable pool.
    Stable,
    /// A process node in the debug pool.
    Debug,
    /// A process node kept outside the pools for reproductions.
    Spare,
    /// A process node following a stable node's store (`twin-N` of `stable-N`), outside the
    /// pools: it gets only that node's mirrored requests.
    Twin,
    /// The lb-router.
    Router,
}

/// One process to supervise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcSpec {
    /// Node id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// `unix`, `uk` or `router`.
    pub kind: String,
    /// Program.
    pub program: PathBuf,
    /// Arguments (never a secret: `/proc/<pid>/cmdline` is world-readable).
    pub args: Vec<String>,
    /// Environment variables set for the process (a unix node's admin token).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Service (or router client) address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Admin bearer token.
    pub token: String,
    /// The supervisor binds `listen` once and hands the listening socket to every start of the
    /// process as its standard input (the router's `--listen-stdin`): while the process restarts,
    /// new connections wait in the socket's backlog instead of being refused.
    #[serde(default)]
    pub listen_on_stdin: bool,
    /// A libvirt domain instead of a child process (`[engine] kind = "libvirt"`).
    #[serde(default)]
    pub domain: Option<crate::libvirt::DomainSpec>,
}

/// The plan `janus up` hands the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Cluster name.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// Processes, in start order.
    pub procs: Vec<ProcSpec>,
    /// First restart backoff.
    pub backoff_initial_ms: u64,
    /// Backoff cap.
    pub backoff_max_ms: u64,
    /// libvirt networks `janus up` created, as (URI, name): `janus down` removes them.
    #[serde(default)]
    pub libvirt_networks: Vec<(String, String)>,
}

/// Why a process stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Unix time in ms.
    pub at_ms: u64,
    /// `exit status: 3`, `signal: 9 (SIGKILL)`...
    pub status: String,
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// One line saying why.
    pub reason: String,
    /// The panic report lines, when the console had one.
    pub panic_report: Vec<String>,
    /// The state dump's sequence number and file, when the console had one.
    pub state_seq: Option<u64>,
    /// Where the dumped snapshot was saved.
    pub state_file: Option<PathBuf>,
}

/// The supervisor's view of one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcState {
    /// The spec.
    pub spec: ProcSpec,
    /// `starting`, `running`, `backoff`, `stopped`.
    pub state: String,
    /// Current pid.
    pub pid: Option<u32>,
    /// When the current run started (unix ms).
    pub started_ms: Option<u64>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Every exit, oldest first (the last 20).
    pub exits: Vec<ExitRecord>,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster name.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// Supervisor pid.
    pub supervisor_pid: u32,
    /// Whether the supervisor is stopping.
    pub stopping: bool,
    /// Processes.
    pub procs: Vec<ProcState>,
}

impl ClusterState {
    /// Reads `state.json` of a run directory.
    pub fn read(run_dir: &Path) -> anyhow::Result<ClusterState> {
        let p = run_dir.join("state.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "no cluster is running from {} (no state.json; start one with `janus up`)",
                run_dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))
    }

    /// The process with this id.
    pub fn proc(&self, id: &str) -> Option<&ProcState> {
        self.procs.iter().find(|p| p.spec.id == id)
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Shared {
    run_dir: PathBuf,
    state: Mutex<ClusterState>,
    stopping: Arc<AtomicBool>,
}

impl Shared {
    fn update(&self, id: &str, f: impl FnOnce(&mut ProcState)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = st.procs.iter_mut().find(|p| p.spec.id == id) {
            f(p);
        }
        st.stopping = self.stopping.load(Ordering::SeqCst);
        if let Err(e) = write_json_atomic(&self.run_dir.join("state.json"), &*st) {
            eprintln!("supervisor: cannot write state.json: {e:#}");
        }
    }
}

/// Writes JSON via a temporary file and a rename, so readers never see half a file. The file is
/// private (0600): plan.json and state.json hold the nodes' admin tokens.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    crate::secret::write_private(path, &serde_json::to_vec_pretty(value)?)
}

/// Runs the supervisor for `run_dir` until SIGTERM/SIGINT. Blocks.
pub fn supervise(run_dir: &Path) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_slice(
        &std::fs::read(run_dir.join("plan.json"))
            .with_context(|| format!("no plan.json in {}", run_dir.display()))?,
    )
    .context("plan.json is not valid")?;
    std::fs::create_dir_all(run_dir.join("logs"))?;
    std::fs::create_dir_all(run_dir.join("crashes"))?;
    let stopping = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stopping))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stopping))?;
    let shared = Arc::new(Shared {
        run_dir: run_dir.to_path_buf(),
        state: Mutex::new(ClusterState {
            cluster: plan.cluster.clone(),
            service: plan.service.clone(),
            supervisor_pid: std::process::id(),
            stopping: false,
            procs: plan
                .procs
                .iter()
                .map(|s| ProcState {
                    spec: s.clone(),
                    state: "starting".into(),
                    pid: None,
                    started_ms: None,
                    restarts: 0,
                    exits: Vec::new(),
                })
                .collect(),
        }),
        stopping: Arc::clone(&stopping),
    });
    shared.update("", |_| {});
    let threads: Vec<_> = plan
        .procs
        .iter()
        .cloned()
        .map(|spec| {
            let shared = Arc::clone(&shared);
            let backoff = (plan.backoff_initial_ms, plan.backoff_max_ms);
            std::thread::spawn(move || match spec.domain.clone() {
                Some(dom) => keep_domain_running(&shared, &spec, &dom, backoff),
                None => keep_running(&shared, &spec, backoff),
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    shared.update("", |_| {});
    Ok(())
}

fn keep_running(shared: &Shared, spec: &ProcSpec, (initial, max): (u64, u64)) {
    let mut backoff = Duration::from_millis(initial);
    let mut crash_no = 0u32;
    // Held for the supervisor's lifetime (see `ProcSpec::listen_on_stdin`).
    let mut held: Option<std::net::TcpListener> = None;
    while !shared.stopping.load(Ordering::SeqCst) {
        let ring = Arc::new(Mutex::new(VecDeque::with_capacity(RING_LINES)));
        let started = Instant::now();
        let child = held_listener(spec, &mut held)
            .map_err(|e| format!("cannot listen on {} for {}: {e}", spec.listen, spec.id))
            .and_then(|stdin| {
                supervised_command(spec)
                    .stdin(stdin)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))
            });
        let mut child = match child {
            Ok(c) => c,
            Err(reason) => {
                if !not_started(shared, spec, reason, &mut backoff, max) {
                    break;
                }
                continue;
            }
        };
        let pid = child.id();
        shared.update(&spec.id, |p| {
            p.state = "running".into();
            p.pid = Some(pid);
            p.started_ms = Some(now_ms());
        });
        let pumps = pump_output(shared, spec, &mut child, &ring);
        let status = wait_or_stop(shared, &mut child);
        for p in pumps {
            let _ = p.join();
        }
        let (status_text, code) = match status {
            Some(st) => (st.to_string(), st.code()),
            None => ("unknown".to_string(), None),
        };
        let stop = Stop {
            status: &status_text,
            code,
            unexpected: "exited unexpectedly",
        };
        if !after_stop(
            shared,
            spec,
            &ring,
            stop,
            &mut crash_no,
            started,
            &mut backoff,
            (initial, max),
        ) {
            break;
        }
    }
    shared.update(&spec.id, |p| {
        p.state = "stopped".into();
        p.pid = None;
    });
}

/// Records that a process or domain could not be started and waits out the backoff; false when the
/// supervisor stops.
fn not_started(
    shared: &Shared,
    spec: &ProcSpec,
    reason: String,
    backoff: &mut Duration,
    max: u64,
) -> bool {
    record_exit(
        shared,
        spec,
        exit_record("not started", None, reason, &[], None),
    );
    wait_backoff(shared, backoff, max)
}

/// How a run of a process or domain ended.
struct Stop<'a> {
    status: &'a str,
    code: Option<i32>,
    /// The reason's words when neither a panic report nor the supervisor explains the stop.
    unexpected: &'a str,
}

/// After a process or domain stopped: records why (the console's panic report and state dump),
/// then unless the supervisor stops waits out the backoff and counts the restart. Returns whether to
/// start it again.
#[allow(clippy::too_many_arguments)]
fn after_stop(
    shared: &Shared,
    spec: &ProcSpec,
    ring: &Mutex<VecDeque<String>>,
    stop: Stop,
    crash_no: &mut u32,
    started: Instant,
    backoff: &mut Duration,
    (initial, max): (u64, u64),
) -> bool {
    let lines: Vec<String> = ring
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let stopping = shared.stopping.load(Ordering::SeqCst);
    let report = panic_report(&lines);
    let state = if report.is_empty() {
        None
    } else {
        *crash_no += 1;
        save_state_dump(&shared.run_dir, &spec.id, *crash_no, &lines)
    };
    let reason = if stopping {
        "stopped by the supervisor".to_string()
    } else if let Some(first) = report.first() {
        first.clone()
    } else {
        format!("{} ({})", stop.unexpected, stop.status)
    };
    record_exit(
        shared,
        spec,
        exit_record(stop.status, stop.code, reason, &report, state),
    );
    if stopping {
        return false;
    }
    if started.elapsed() > Duration::from_secs(30) {
        *backoff = Duration::from_millis(initial);
    }
    if !wait_backoff(shared, backoff, max) {
        return false;
    }
    shared.update(&spec.id, |p| p.restarts += 1);
    true
}

/// [`keep_running`] for a libvirt domain: defines it, subscribes to its lifecycle events, starts it,
/// follows its console file, and when it stops records why (with the panic report and state dump of
/// the console, as for a QEMU child) and starts it again after the backoff. When the supervisor
/// stops, the domain is destroyed and undefined.
fn keep_domain_running(
    shared: &Shared,
    spec: &ProcSpec,
    dom: &crate::libvirt::DomainSpec,
    (initial, max): (u64, u64),
) {
    use crate::libvirt::{is_running, qemu_pid, virsh};
    let mut backoff = Duration::from_millis(initial);
    let mut crash_no = 0u32;
    let xml = dom.xml_file.to_string_lossy().into_owned();
    while !shared.stopping.load(Ordering::SeqCst) {
        let ring = Arc::new(Mutex::new(VecDeque::with_capacity(RING_LINES)));
        let started = Instant::now();
        // Defined first (an event subscription names an existing domain), subscribed before the
        // start, so no stop goes unseen.
        if let Err(e) = virsh(&dom.uri, &["define", &xml]) {
            let reason = format!("cannot define domain {}: {e:#}", dom.name);
            if !not_started(shared, spec, reason, &mut backoff, max) {
                break;
            }
            continue;
        }
        let events = Command::new("virsh")
            .args(["-q", "-c", &dom.uri, "event", "--domain", &dom.name])
            .args(["--event", "lifecycle", "--loop"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let begin = events
            .map_err(|e| format!("cannot run virsh event: {e}"))
            .and_then(|ev| {
                let start = if is_running(&dom.uri, &dom.name) {
                    Ok(String::new())
                } else {
                    virsh(&dom.uri, &["start", &dom.name])
                };
                match start {
                    Ok(_) => Ok(ev),
                    Err(e) => {
                        kill_child(ev);
                        Err(format!("cannot start domain {}: {e:#}", dom.name))
                    }
                }
            });
        let mut events = match begin {
            Ok(ev) => ev,
            Err(reason) => {
                if !not_started(shared, spec, reason, &mut backoff, max) {
                    break;
                }
                continue;
            }
        };
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        if let Some(out) = events.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        shared.update(&spec.id, |p| {
            p.state = "running".into();
            p.pid = qemu_pid(&dom.uri, &dom.name);
            p.started_ms = Some(now_ms());
        });
        let follow_done = Arc::new(AtomicBool::new(false));
        let follower = follow_console(shared, spec, &dom.console, &ring, &follow_done);
        let mut last_poll = Instant::now();
        let status = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(why) = stopped_event(&line) {
                        break why;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // The event stream ended: fall back on polling.
                    std::thread::sleep(Duration::from_millis(200));
                    last_poll = Instant::now() - Duration::from_secs(2);
                }
            }
            if shared.stopping.load(Ordering::SeqCst) {
                let _ = virsh(&dom.uri, &["destroy", &dom.name]);
                break "domain destroyed".to_string();
            }
            if last_poll.elapsed() > Duration::from_secs(1) {
                last_poll = Instant::now();
                if !is_running(&dom.uri, &dom.name) {
                    // Its event is likely on the way: it says why.
                    let why = (0..10).find_map(|_| {
                        let line = rx.recv_timeout(Duration::from_millis(50)).ok()?;
                        stopped_event(&line)
                    });
                    break why.unwrap_or_else(|| "domain not running".to_string());
                }
            }
        };
        kill_child(events);
        follow_done.store(true, Ordering::SeqCst);
        let _ = follower.join();
        let stop = Stop {
            status: &status,
            code: None,
            unexpected: "stopped unexpectedly",
        };
        if !after_stop(
            shared,
            spec,
            &ring,
            stop,
            &mut crash_no,
            started,
            &mut backoff,
            (initial, max),
        ) {
            break;
        }
    }
    if let Err(e) = crate::libvirt::remove_domain(&dom.uri, &dom.name) {
        eprintln!("supervisor: {e:#}");
    }
    shared.update(&spec.id, |p| {
        p.state = "stopped".into();
        p.pid = None;
    });
}

/// `domain Stopped Destroyed` for a lifecycle event line saying the domain stopped.
fn stopped_event(line: &str) -> Option<String> {
    let (_, event) = lb_router::discovery::parse_event(line)?;
    (event == "Stopped").then(|| {
        let what = line.rsplit("': ").next().unwrap_or("Stopped").trim();
        format!("domain {what}")
    })
}

fn kill_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Follows a console file (written by libvirt's virtlogd) into the ring and the node's log until
/// `done`, then reads what is left.
fn follow_console(
    shared: &Shared,
    spec: &ProcSpec,
    console: &Path,
    ring: &Arc<Mutex<VecDeque<String>>>,
    done: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let log_path = shared.run_dir.join("logs").join(format!("{}.log", spec.id));
    let (console, ring, done) = (console.to_path_buf(), Arc::clone(ring), Arc::clone(done));
    std::thread::spawn(move || {
        use std::io::{Seek, SeekFrom};
        let mut pos = 0u64;
        let mut partial = Vec::new();
        let mut quiet_after_done = 0;
        loop {
            let finishing = done.load(Ordering::SeqCst);
            let len = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0;
                partial.clear();
            }
            let mut grew = false;
            if len > pos
                && let Ok(mut f) = std::fs::File::open(&console)
                && f.seek(SeekFrom::Start(pos)).is_ok()
            {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() {
                    pos += buf.len() as u64;
                    grew = !buf.is_empty();
                    partial.extend_from_slice(&buf);
                }
            }
            while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                append_log(&log_path, &text);
                let mut r = ring.lock().unwrap_or_else(|e| e.into_inner());
                if r.len() == RING_LINES {
                    r.pop_front();
                }
                r.push_back(text);
            }
            if finishing {
                // virtlogd may still be writing the last lines: stop after two quiet reads.
                quiet_after_done = if grew { 0 } else { quiet_after_done + 1 };
                if quiet_after_done >= 2 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// The command for a supervised process. Under `setpriv --pdeathsig KILL` (util-linux) when it is
/// installed: the kernel kills the process when the supervisor's thread that started it ends, so a
/// supervisor killed by SIGKILL leaves no orphans (nodes, QEMU) behind; `setpriv` execs the program,
/// which keeps its pid and command line. Without `setpriv`, `janus up`/`down` reap the processes a
/// dead supervisor recorded.
/// The process's standard input: the held listening socket (bound on first use) when the spec asks
/// for it, otherwise nothing.
fn held_listener(
    spec: &ProcSpec,
    held: &mut Option<std::net::TcpListener>,
) -> std::io::Result<Stdio> {
    if !spec.listen_on_stdin {
        return Ok(Stdio::null());
    }
    let listener = match held {
        Some(l) => l,
        None => held.insert(std::net::TcpListener::bind(spec.listen)?),
    };
    Ok(Stdio::from(std::os::fd::OwnedFd::from(
        listener.try_clone()?,
    )))
}

fn supervised_command(spec: &ProcSpec) -> Command {
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let setpriv = SETPRIV.get_or_init(|| {
        ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    });
    match setpriv {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL"])
                .arg(&spec.program)
                .args(&spec.args)
                .envs(spec.env.iter().map(|(k, v)| (k, v)));
            cmd
        }
        None => {
            let mut cmd = Command::new(&spec.program);
            cmd.args(&spec.args)
                .envs(spec.env.iter().map(|(k, v)| (k, v)));
            cmd
        }
    }
}

fn exit_record(
    status: &str,
    code: Option<i32>,
    reason: String,
    report: &[String],
    state: Option<(u64, PathBuf)>,
) -> ExitRecord {
    ExitRecord {
        at_ms: now_ms(),
        status: status.to_string(),
        code,
        reason,
        panic_report: report.to_vec(),
        state_seq: state.as_ref().map(|s| s.0),
        state_file: state.map(|s| s.1),
    }
}

fn record_exit(shared: &Shared, spec: &ProcSpec, rec: ExitRecord) {
    shared.update(&spec.id, |p| {
        p.state = "backoff".into();
        p.pid = None;
        p.exits.push(rec);
        if p.exits.len() > 20 {
            p.exits.remove(0);
        }
    });
}

/// Waits out the backoff (returns false when stopping) and doubles it up to `max`.
fn wait_backoff(shared: &Shared, backoff: &mut Duration, max: u64) -> bool {
    let until = Instant::now() + *backoff;
    while Instant::now() < until {
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    *backoff = (*backoff * 2).min(Duration::from_millis(max));
    true
}

/// Waits for the child; when the supervisor stops, sends SIGTERM, then SIGKILL after 5 s.
fn wait_or_stop(shared: &Shared, child: &mut Child) -> Option<std::process::ExitStatus> {
    let mut term_sent: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if shared.stopping.load(Ordering::SeqCst) {
            match term_sent {
                None => {
                    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
                    let _ = kill(pid, Signal::SIGTERM);
                    term_sent = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(5) => {
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pump_output(
    shared: &Shared,
    spec: &ProcSpec,
    child: &mut Child,
    ring: &Arc<Mutex<VecDeque<String>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let log_path = shared.run_dir.join("logs").join(format!("{}.log", spec.id));
    let log = Arc::new(Mutex::new(log_path));
    let mut handles = Vec::new();
    let streams: Vec<Box<dyn Read + Send>> = [
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
    .collect();
    for stream in streams {
        let ring = Arc::clone(ring);
        let log = Arc::clone(&log);
        handles.push(std::thread::spawn(move || {
            let reader = BufReader::new(stream);
            for line in reader.split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                let path = log.lock().unwrap_or_else(|e| e.into_inner());
                append_log(&path, &text);
                drop(path);
                let mut r = ring.lock().unwrap_or_else(|e| e.into_inner());
                if r.len() == RING_LINES {
                    r.pop_front();
                }
                r.push_back(text);
            }
        }));
    }
    handles
}

fn append_log(path: &Path, line: &str) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// The panic report in a console: from the first line mentioning a panic to the end (at most 40
/// lines), without the state dump line.
pub fn panic_report(lines: &[String]) -> Vec<String> {
    let Some(start) = lines
        .iter()
        .position(|l| l.to_ascii_lowercase().contains("panic"))
    else {
        return Vec::new();
    };
    lines[start..]
        .iter()
        .filter(|l| !l.starts_with("JANUS-STATE"))
        .take(40)
        .cloned()
        .collect()
}

/// Saves the `JANUS-STATE seq=N <base64>` dump of a console, if any; returns (seq, file).
fn save_state_dump(run_dir: &Path, id: &str, n: u32, lines: &[String]) -> Option<(u64, PathBuf)> {
    let (seq, bytes) = parse_state_dump(lines)?;
    let file = run_dir.join("crashes").join(format!("{id}-{n}.state"));
    std::fs::write(&file, bytes).ok()?;
    Some((seq, file))
}

/// Parses `JANUS-STATE seq=N <base64>`.
pub fn parse_state_line(line: &str) -> Option<(u64, Vec<u8>)> {
    let rest = line.trim().strip_prefix("JANUS-STATE ")?;
    let (seq, b64) = rest.split_once(' ')?;
    let seq = seq.strip_prefix("seq=")?.parse().ok()?;
    Some((seq, base64_decode(b64.trim())?))
}

/// The last complete state dump in a console: a `JANUS-STATE seq=N <base64>` line, or the
/// `JANUS-STATE-PART seq=N i/K <base64>` lines i = 1..=K in order (a large state), whose pieces
/// are concatenated. An incomplete or out-of-order set of parts is no dump.
pub fn parse_state_dump<S: AsRef<str>>(lines: &[S]) -> Option<(u64, Vec<u8>)> {
    let mut found = None;
    // (seq, parts, next part expected, bytes so far)
    let mut partial: Option<(u64, u64, u64, Vec<u8>)> = None;
    for line in lines {
        let line = line.as_ref().trim();
        if let Some(dump) = parse_state_line(line) {
            found = Some(dump);
            partial = None;
            continue;
        }
        let Some(rest) = line.strip_prefix("JANUS-STATE-PART ") else {
            continue;
        };
        let part = (|| {
            let mut fields = rest.splitn(3, ' ');
            let seq: u64 = fields.next()?.strip_prefix("seq=")?.parse().ok()?;
            let (i, k) = fields.next()?.split_once('/')?;
            let (i, k): (u64, u64) = (i.parse().ok()?, k.parse().ok()?);
            Some((seq, i, k, base64_decode(fields.next()?.trim())?))
        })();
        partial = match (part, partial.take()) {
            (Some((seq, 1, k, bytes)), _) if k >= 1 => Some((seq, k, 2, bytes)),
            (Some((seq, i, k, bytes)), Some((s, pk, next, mut acc)))
                if seq == s && k == pk && i == next =>
            {
                acc.extend_from_slice(&bytes);
                Some((seq, k, next + 1, acc))
            }
            _ => None,
        };
        if let Some((seq, k, next, _)) = &partial
            && *next == k + 1
        {
            let seq = *seq;
            found = partial.take().map(|(_, _, _, bytes)| (seq, bytes));
        }
    }
    found
}

/// Standard base64 (with or without padding), as the `base64` crate decodes it.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    STANDARD_ANY_PADDING.decode(s).ok()
}

/// The last `n` lines of a node's log file.
pub fn tail_log(run_dir: &Path, id: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let path = run_dir.join("logs").join(format!("{id}.log"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no log for node '{id}' at {}", path.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dump_and_panic_report_are_parsed() {
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("a*"), None);
        let lines: Vec<String> = [
            "booted",
            "PANIC at src/lib.rs:3:5: index out of bounds",
            "trace id 0123",
            "JANUS-STATE seq=7 aGVsbG8=",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(panic_report(&lines).len(), 2);
        assert_eq!(parse_state_line(&lines[3]), Some((7, b"hello".to_vec())));
        assert_eq!(parse_state_line("JANUS-STATE seq=x aGVs"), None);
        assert_eq!(parse_state_dump(&lines), Some((7, b"hello".to_vec())));
    }

    #[test]
    fn a_state_dump_in_parts_is_reassembled() {
        // "hello world!" in parts of 3 bytes, with other console lines around them.
        let parts = [
            "JANUS-PANIC panicked at src/lib.rs:1:1: boom",
            "JANUS-STATE-PART seq=5 1/4 aGVs",
            "JANUS-STATE-PART seq=5 2/4 bG8g",
            "JANUS-STATE-PART seq=5 3/4 d29y",
            "JANUS-STATE-PART seq=5 4/4 bGQh",
            "JANUS-EXIT status=33",
        ];
        assert_eq!(
            parse_state_dump(&parts),
            Some((5, b"hello world!".to_vec()))
        );
        assert_eq!(panic_report(&parts.map(String::from)).len(), 2);
        // A missing, repeated or foreign part is no dump.
        for broken in [
            vec![parts[1], parts[2], parts[4]],
            vec![parts[1], parts[2], parts[2], parts[3], parts[4]],
            vec![
                parts[1],
                parts[2],
                "JANUS-STATE-PART seq=6 3/4 d29y",
                parts[4],
            ],
            vec![parts[1], parts[2], parts[3]],
            vec![parts[2], parts[3], parts[4]],
        ] {
            assert_eq!(parse_state_dump(&broken), None, "{broken:?}");
        }
        // The last complete dump wins.
        let mut two = vec!["JANUS-STATE seq=1 aGk="];
        two.extend_from_slice(&parts[1..5]);
        assert_eq!(parse_state_dump(&two).map(|d| d.0), Some(5));
    }
}

//! `janus faults record ID` and `janus faults timetravel ID`: time-travel debugging of a fault that
//! happened on a unikernel node.
//!
//! **record** boots a spare of the failing node under QEMU's record mode (TCG, `-icount`, every
//! nondeterministic input logged: network packets through `filter-replay`, clocks, interrupts,
//! console writes), restores the fault's mirrored state into it (`PUT /state`), replays the captured
//! request and keeps the recording when the node fails the same way. A recording is only kept once a
//! replay of it reproduced the recorded console byte for byte: QEMU 7.2 writes some recordings that
//! stall on replay (see docs/DEBUGGING.md), and those are recorded again.
//!
//! **timetravel** replays the recording under QEMU's gdbstub and starts gdb (the same plumbing as
//! `janus debug`) stopped at the fault: the panic handler, or the kernel's exit for other exits.
//! From there `reverse-stepi` and `reverse-continue` walk back: QEMU loads the snapshot taken at the
//! start of the recording and replays forward to the instruction before. `reverse-continue` is
//! janus' own (`debug/janus-timetravel.py`, over QEMU's QMP socket): QEMU 7.2's deadlocks.
//!
//! The recording lives in `<run-dir>/faults/<ID>/`: `rr.bin` (the event log), `snapshots.qcow2`
//! (the VM snapshot `init` taken at boot), the image and its unstripped ELF, `token` (the recorded
//! node's admin token, 0600, which QEMU hands the guest through fw_cfg again on replay),
//! `record-console.txt`, `recording.json` (the exact QEMU command lines and the figures).

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::faults::{MirroredState, OutcomeClass, open, resolve_state, stable_class};
use crate::supervisor::{ClusterState, ProcSpec};

/// The console line the kernel prints just before it exits (backend-uk `drivers::exit`).
const EXIT_MARK: &str = "JANUS-EXIT status=";
/// The console line a uk node prints once it serves.
const LISTENING_MARK: &str = "listening on";
/// The VM snapshot QEMU takes when recording starts and loads when replay starts.
const SNAPSHOT: &str = "init";

/// Options of `janus faults record`.
#[derive(Debug, Clone)]
pub struct RecordOpts {
    /// Cluster name.
    pub cluster: String,
    /// How long the recorded node may take to boot and to answer (TCG is slow).
    pub timeout: Duration,
    /// How many recordings to try before giving up on one that replays.
    pub attempts: u32,
}

/// What `recording.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    /// Fault id.
    pub fault: i64,
    /// The node the fault happened on.
    pub node: String,
    /// `METHOD path` of the replayed request.
    pub request: String,
    /// Where the mirrored state came from.
    pub state_source: String,
    /// QEMU's arguments in record mode (the host ports it forwarded are gone now).
    pub record_args: Vec<String>,
    /// QEMU's arguments in replay mode (add `-gdb ... -S` to debug).
    pub replay_args: Vec<String>,
    /// The unstripped ELF gdb reads.
    pub elf: PathBuf,
    /// Recording attempts it took (each checked by a replay).
    pub attempts: u32,
    /// Wall time of the kept recording: boot, state restore, request, until the fault.
    pub record_ms: u64,
    /// Wall time of the check replay, from QEMU's start to the fault.
    pub replay_ms: u64,
    /// Size of `rr.bin`.
    pub log_bytes: u64,
    /// Size of `snapshots.qcow2`.
    pub snapshot_bytes: u64,
    /// The console's last line (the exit line, for a crash).
    pub outcome: String,
}

/// The fault directory of a cluster's fault.
pub fn fault_dir(run_dir: &Path, id: i64) -> PathBuf {
    run_dir.join("faults").join(id.to_string())
}

/// The node a fault happened on, refused unless it is a unikernel node of the cluster.
fn failing_node(dir: &Path, f: &lb_router::FaultRecord) -> anyhow::Result<ProcSpec> {
    let id = f.summary.id;
    let node = if f.summary.kind == "debug_fault" {
        f.summary.debug_node.as_deref()
    } else {
        f.summary.stable_node.as_deref()
    };
    let Some(node) = node else {
        bail!("fault {id} names no node it happened on: nothing to record");
    };
    let state = ClusterState::read(dir)?;
    let Some(p) = state.proc(node) else {
        bail!("fault {id} happened on '{node}', which is no longer part of the cluster");
    };
    if p.spec.kind != "uk" {
        bail!(
            "fault {id} happened on '{node}', a {} (process) node: time travel records a unikernel; \
             a process node is debugged directly (`janus faults repro {id}`, `janus debug {node}`)",
            p.spec.kind
        );
    }
    Ok(p.spec.clone())
}

/// A path as a QEMU option value can hold it (UTF-8, no comma).
fn qemu_path(p: &Path) -> anyhow::Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8 (QEMU option)", p.display()))?;
    if s.contains(',') {
        bail!("{s} contains a comma, which QEMU options cannot hold here");
    }
    Ok(s.to_string())
}

/// QEMU's arguments for a record or replay of `node_args` (a node's command line made by
/// [`crate::flavor::uk::qemu_command`]): TCG, the image and token from `dir`, no gdbstub, no
/// isa-debug-exit (QEMU exiting from inside a device write loses the end of the log: the kernel
/// halts instead, and janus stops QEMU once the console shows the exit), and the record/replay
/// options. `forward` (record only) is the host's service and admin addresses.
pub fn rr_args(
    node_args: &[String],
    dir: &Path,
    image: &Path,
    record: bool,
    forward: Option<(SocketAddr, SocketAddr)>,
) -> anyhow::Result<Vec<String>> {
    let path = qemu_path;
    let mut out = Vec::new();
    let mut it = node_args.iter();
    while let Some(a) = it.next() {
        let value = |it: &mut std::slice::Iter<'_, String>| {
            it.next()
                .cloned()
                .with_context(|| format!("the node's QEMU option {a} has no value"))
        };
        match a.as_str() {
            "-accel" => {
                value(&mut it)?;
                out.extend(["-accel".into(), "tcg".into()]);
            }
            "-netdev" => {
                let v = value(&mut it)?;
                if !v.starts_with("user,id=n0,") {
                    bail!("the node's network ({v}) is not the user networking janus records");
                }
                let mut n = String::from("user,id=n0,net=10.0.2.0/24");
                if let Some((listen, admin)) = forward {
                    let _ = write!(
                        n,
                        ",hostfwd=tcp:{}:{}-:{},hostfwd=tcp:{}:{}-:{}",
                        listen.ip(),
                        listen.port(),
                        crate::flavor::uk::GUEST_SERVICE_PORT,
                        admin.ip(),
                        admin.port(),
                        crate::flavor::uk::GUEST_ADMIN_PORT
                    );
                }
                out.extend(["-netdev".into(), n]);
            }
            "-kernel" => {
                value(&mut it)?;
                out.extend(["-kernel".into(), path(image)?]);
            }
            "-fw_cfg" => {
                value(&mut it)?;
                out.extend([
                    "-fw_cfg".into(),
                    format!(
                        "name={},file={}",
                        crate::flavor::uk::FW_CFG_TOKEN,
                        path(&dir.join("token"))?
                    ),
                ]);
            }
            "-gdb" => {
                value(&mut it)?;
            }
            "-device" => {
                let v = value(&mut it)?;
                if !v.starts_with("isa-debug-exit") {
                    out.extend(["-device".into(), v]);
                }
            }
            _ => out.push(a.clone()),
        }
    }
    out.extend([
        "-icount".into(),
        format!(
            "shift=auto,rr={},rrfile={},rrsnapshot={SNAPSHOT}",
            if record { "record" } else { "replay" },
            path(&dir.join("rr.bin"))?
        ),
        "-drive".into(),
        format!("file={},if=none,id=rr", path(&dir.join("snapshots.qcow2"))?),
        "-object".into(),
        "filter-replay,id=rr-net,netdev=n0".into(),
    ]);
    Ok(out)
}

/// A QEMU process whose console goes to a file; stopped (SIGTERM, so QEMU closes its log in
/// order, then SIGKILL) when dropped.
struct Qemu {
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
}

impl Qemu {
    fn start(args: &[String], console: &Path) -> anyhow::Result<Qemu> {
        let stderr = console.with_extension("stderr");
        let out = std::fs::File::create(console)
            .with_context(|| format!("cannot create {}", console.display()))?;
        let err = std::fs::File::create(&stderr)
            .with_context(|| format!("cannot create {}", stderr.display()))?;
        let child = Command::new("qemu-system-x86_64")
            .args(args)
            .env_remove(crate::launch::ADMIN_TOKEN_ENV)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("cannot start qemu-system-x86_64 (install qemu-system-x86)")?;
        Ok(Qemu {
            child,
            console: console.to_path_buf(),
            stderr,
        })
    }

    fn console(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.console) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls the console until it holds `mark`; fails when QEMU exits or the deadline passes.
    fn wait_for(&mut self, mark: &str, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if self.console().contains(mark) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before its console showed '{mark}': {}",
                    self.stderr().trim()
                );
            }
            if Instant::now() >= deadline {
                bail!("no '{mark}' on the console in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (QEMU finishes its record log), then SIGKILL if it lingers.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The console as the guest wrote it (QEMU's own messages are on stderr).
fn guest_lines(console: &str) -> String {
    console
        .lines()
        .filter(|l| !l.starts_with("qemu-system-"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn qemu_img_create(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")
        .output()
        .context("cannot run qemu-img (install qemu-utils: scripts/install-deps)")?;
    if !o.status.success() {
        bail!(
            "qemu-img create {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// The verdict of `janus faults record`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordReport {
    /// The fault directory.
    pub dir: PathBuf,
    /// Whether the fault reproduced under record (and the recording replays).
    pub reproduced: bool,
    /// What happened, for a terminal.
    pub summary: String,
    /// The recording, when kept.
    pub recording: Option<Recording>,
}

/// `janus faults record ID`.
pub fn record(id: i64, opts: &RecordOpts) -> anyhow::Result<RecordReport> {
    let (run_dir, store) = open(&opts.cluster)?;
    let f = store
        .get(id)?
        .with_context(|| format!("no fault {id} in the store (see `janus faults list`)"))?;
    let spec = failing_node(&run_dir, &f)?;
    let (image, _) = crate::flavor::uk::image_and_accel_of(&spec.args);
    let image = image.context("the node's QEMU command line names no -kernel image")?;
    let elf = image.with_extension("elf");
    if !elf.is_file() {
        bail!(
            "the unstripped ELF {} is missing (written beside the image by `janus build --flavor uk`)",
            elf.display()
        );
    }
    let failed = if f.summary.kind == "debug_fault" {
        &f.summary.debug_outcome
    } else {
        &f.summary.stable_outcome
    };
    let expected = stable_class(failed.as_deref().unwrap_or(""));
    if expected == OutcomeClass::Unavailable {
        bail!("fault {id}: the node could not be reached at all, there is no failure to record");
    }
    let mirrored = resolve_state(&run_dir, &f)?
        .unwrap_or_else(|| MirroredState::empty("none found: a fresh, empty state"));

    let dir = fault_dir(&run_dir, id);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    crate::secret::private_dir(&dir)?;
    let name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
    let (img_copy, elf_copy) = (dir.join(name(&image)), dir.join(name(&elf)));
    std::fs::copy(&image, &img_copy).with_context(|| format!("cannot copy {}", image.display()))?;
    std::fs::copy(&elf, &elf_copy).with_context(|| format!("cannot copy {}", elf.display()))?;
    crate::secret::write_private(&dir.join("token"), spec.token.as_bytes())?;

    let mut last_failure = String::new();
    for attempt in 1..=opts.attempts.max(1) {
        qemu_img_create(&dir.join("snapshots.qcow2"))?;
        let _ = std::fs::remove_file(dir.join("rr.bin"));
        let listen = crate::up::free_addr()?;
        let admin = crate::up::free_addr()?;
        let args = rr_args(&spec.args, &dir, &img_copy, true, Some((listen, admin)))?;
        let node = ProcSpec {
            listen,
            admin,
            ..spec.clone()
        };
        let started = Instant::now();
        let deadline = started + opts.timeout;
        let mut qemu = Qemu::start(&args, &dir.join("record-console.txt"))?;
        // Readiness from the console, not from probes: every connection is more to record.
        qemu.wait_for(LISTENING_MARK, deadline)?;
        if mirrored.bytes != crate::faults::empty_state() {
            let r = crate::faults::admin_put(&node, "/state", &mirrored.bytes)?;
            if r.status != 204 && r.status != 200 {
                bail!(
                    "restoring the state into the recorded node was refused: {} {}",
                    r.status,
                    r.text()
                );
            }
        }
        // The request runs beside a watch on the console: a crashed guest halts (no
        // isa-debug-exit here) and its connection stays open until QEMU stops.
        let trace_id = crate::secret::random_token()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let (fault, addr) = (f.clone(), listen);
        let request =
            std::thread::spawn(move || crate::faults::replay(&fault, addr, &trace_id, left));
        let class = loop {
            if qemu.console().contains(EXIT_MARK) {
                break OutcomeClass::Panic;
            }
            if request.is_finished() {
                let result = request
                    .join()
                    .map_err(|_| anyhow::anyhow!("the request thread panicked"))?;
                break crate::faults::replay_class(&result, OutcomeClass::Panic);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let crashed = class == OutcomeClass::Panic;
        if crashed {
            qemu.wait_for(EXIT_MARK, Instant::now() + opts.timeout)?;
        }
        qemu.stop();
        let record_ms = started.elapsed().as_millis() as u64;
        if class != expected {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(RecordReport {
                dir,
                reproduced: false,
                summary: format!(
                    "fault {id}: not reproduced under record: the node failed with {expected:?}, \
                     the recorded node gave {class:?} (state: {})",
                    mirrored.source
                ),
                recording: None,
            });
        }
        let recorded = guest_lines(&qemu.console());
        // The check: a replay must print the same console and reach the same end.
        let replay_args = rr_args(&spec.args, &dir, &img_copy, false, None)?;
        let check = Instant::now();
        let budget = Duration::from_millis(record_ms * 3).max(Duration::from_secs(20));
        let replayed = replay_console(&replay_args, &dir, &recorded, crashed, budget)?;
        let replay_ms = check.elapsed().as_millis() as u64;
        if replayed != recorded {
            last_failure = format!(
                "attempt {attempt}: the replay stopped after {} of {} console lines",
                replayed.lines().count(),
                recorded.lines().count()
            );
            continue;
        }
        let rec = Recording {
            fault: id,
            node: spec.id.clone(),
            request: format!("{} {}", f.summary.method, f.summary.path),
            state_source: mirrored.source.clone(),
            record_args: args,
            replay_args,
            elf: elf_copy,
            attempts: attempt,
            record_ms,
            replay_ms,
            log_bytes: file_size(&dir.join("rr.bin")),
            snapshot_bytes: file_size(&dir.join("snapshots.qcow2")),
            outcome: recorded.lines().last().unwrap_or_default().to_string(),
        };
        std::fs::write(
            dir.join("recording.json"),
            serde_json::to_string_pretty(&rec)?,
        )?;
        let summary = format!(
            "fault {id} ({} on {}): recorded in {} ({}), {} ms to record, {} ms to replay; \
             log {} bytes, snapshots {} bytes; {} attempt(s)\n  ends with: {}\n  next: janus faults \
             timetravel {id}{}",
            rec.request,
            rec.node,
            dir.display(),
            rec.state_source,
            rec.record_ms,
            rec.replay_ms,
            rec.log_bytes,
            rec.snapshot_bytes,
            rec.attempts,
            rec.outcome,
            if opts.cluster == "default" {
                String::new()
            } else {
                format!(" --cluster {}", opts.cluster)
            }
        );
        return Ok(RecordReport {
            dir,
            reproduced: true,
            summary,
            recording: Some(rec),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    bail!(
        "fault {id} reproduced under record, but none of {} recordings replayed ({last_failure}); \
         QEMU's record/replay lost an event, see docs/DEBUGGING.md",
        opts.attempts
    )
}

/// Replays with no debugger until the console holds `expected` (or the exit line), and returns the
/// guest's console.
fn replay_console(
    args: &[String],
    dir: &Path,
    expected: &str,
    crashed: bool,
    budget: Duration,
) -> anyhow::Result<String> {
    let scratch = dir.join("check");
    std::fs::create_dir_all(&scratch)?;
    let snap = scratch.join("snapshots.qcow2");
    std::fs::copy(dir.join("snapshots.qcow2"), &snap)?;
    let args = with_snapshot_drive(args, &snap)?;
    let mut qemu = Qemu::start(&args, &scratch.join("console.txt"))?;
    let deadline = Instant::now() + budget;
    loop {
        let now = guest_lines(&qemu.console());
        let done = if crashed {
            now.contains(EXIT_MARK)
        } else {
            now.len() >= expected.len()
        };
        if done || Instant::now() >= deadline || qemu.child.try_wait()?.is_some() {
            qemu.stop();
            let out = guest_lines(&qemu.console());
            drop(qemu);
            let _ = std::fs::remove_dir_all(&scratch);
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `args` with the snapshot drive at `snap` (each session replays on its own copy: QEMU locks the
/// drive, and the recording stays untouched).
fn with_snapshot_drive(args: &[String], snap: &Path) -> anyhow::Result<Vec<String>> {
    let s = snap
        .to_str()
        .with_context(|| format!("{} is not UTF-8", snap.display()))?;
    Ok(args
        .iter()
        .map(|a| {
            if a.ends_with(",if=none,id=rr") {
                format!("file={s},if=none,id=rr")
            } else {
                a.clone()
            }
        })
        .collect())
}

/// Reads a fault's recording, with errors that say what to do.
pub fn load(cluster: &str, id: i64) -> anyhow::Result<(PathBuf, Recording)> {
    let (run_dir, store) = open(cluster)?;
    let f = store
        .get(id)?
        .with_context(|| format!("no fault {id} in the store (see `janus faults list`)"))?;
    failing_node(&run_dir, &f)?;
    let dir = fault_dir(&run_dir, id);
    let meta = dir.join("recording.json");
    if !meta.is_file() {
        bail!(
            "fault {id} has no recording ({} is missing): run `janus faults record {id}` first",
            meta.display()
        );
    }
    let rec: Recording = serde_json::from_str(
        &std::fs::read_to_string(&meta)
            .with_context(|| format!("cannot read {}", meta.display()))?,
    )
    .with_context(|| format!("{} is not a recording", meta.display()))?;
    for part in ["rr.bin", "snapshots.qcow2"] {
        if !dir.join(part).is_file() {
            bail!(
                "the recording of fault {id} is incomplete ({} is missing): record it again",
                dir.join(part).display()
            );
        }
    }
    Ok((dir, rec))
}

/// gdb commands that stop a replay at the fault: breakpoints on the panic handler and on the
/// kernel's exit (every other way a node dies), then run to the first.
pub const STOP_AT_FAULT: [&str; 3] = [
    "break rust_begin_unwind",
    "break backend_uk::drivers::exit::exit",
    "continue",
];

/// `janus faults timetravel ID`: replays under the gdbstub and runs gdb stopped at the fault;
/// batch with `exec`, interactive without. Returns gdb's exit status and the replayed console.
pub fn timetravel(
    cluster: &str,
    id: i64,
    exec: &[String],
    timeout: Duration,
) -> anyhow::Result<(i32, String)> {
    let (dir, rec) = load(cluster, id)?;
    let session = dir.join(format!("session-{}", std::process::id()));
    std::fs::create_dir_all(&session)?;
    let result = (|| {
        let snap = session.join("snapshots.qcow2");
        std::fs::copy(dir.join("snapshots.qcow2"), &snap)?;
        let sock = session.join("gdb.sock");
        let qmp = session.join("qmp.sock");
        let mut args = with_snapshot_drive(&rec.replay_args, &snap)?;
        args.extend([
            "-gdb".into(),
            crate::flavor::uk::gdbstub_arg(&sock)?,
            "-S".into(),
            // reverse-continue (janus-timetravel.py) loads snapshots and sets replay breaks here.
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qemu_path(&qmp)?),
        ]);
        let script = session.join("janus-timetravel.py");
        std::fs::write(&script, crate::debug::TIMETRAVEL_SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        let mut qemu = Qemu::start(&args, &session.join("console.txt"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() || !qmp.exists() {
            if let Some(status) = qemu.child.try_wait()? {
                bail!("QEMU exited ({status}) on replay: {}", qemu.stderr().trim());
            }
            if Instant::now() > deadline {
                bail!("QEMU's gdbstub {} did not appear", sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let target = crate::debug::Target::Qemu {
            socket: sock,
            elf: rec.elf.clone(),
            accel: Some("tcg".into()),
        };
        let mut pre = vec![
            format!("source {}", script.display()),
            format!(
                "python janus_timetravel({})",
                crate::debug::py_str(&qmp.to_string_lossy())
            ),
        ];
        pre.extend(STOP_AT_FAULT.iter().map(|s| s.to_string()));
        let mut cmd = crate::debug::gdb_command_with(&target, &pre, exec, &session)?;
        let code = if exec.is_empty() {
            eprintln!(
                "janus: replaying fault {id} ({} on {}); gdb stops at the fault: \
                 reverse-stepi, `break FUNCTION` then reverse-continue, janus-icount, bt; \
                 `quit` ends the replay",
                rec.request, rec.node
            );
            cmd.status()
                .context("cannot start gdb")?
                .code()
                .unwrap_or(1)
        } else {
            let mut gdb = cmd.spawn().context("cannot start gdb")?;
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(s) = gdb.try_wait()? {
                    break s.code().unwrap_or(1);
                }
                if Instant::now() > deadline {
                    let _ = gdb.kill();
                    let _ = gdb.wait();
                    bail!(
                        "the time-travel session did not finish within {} s (a reverse step \
                         replays from the start of the recording; raise --timeout)",
                        timeout.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        qemu.stop();
        Ok((code, guest_lines(&qemu.console())))
    })();
    let _ = std::fs::remove_dir_all(&session);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_replay_arguments() {
        let node: Vec<String> = [
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-smp",
            "1",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-netdev",
            "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:1-:80",
            "-device",
            "virtio-net-device,netdev=n0",
            "-kernel",
            "/old/x.img",
            "-append",
            "janus.node=stable-0 ip=10.0.2.15/24",
            "-fw_cfg",
            "name=opt/janus/token,file=/secret/stable-0-1.token",
            "-gdb",
            "unix:/run/gdb/stable-0.sock,server=on,wait=off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let dir = Path::new("/runs/c/faults/7");
        let a = |addr: &str| addr.parse::<SocketAddr>().expect("addr");
        let rec = rr_args(
            &node,
            dir,
            &dir.join("x.img"),
            true,
            Some((a("127.0.0.1:5000"), a("127.0.0.1:5001"))),
        )
        .expect("record args");
        let joined = rec.join(" ");
        assert!(joined.contains("-accel tcg"), "{joined}");
        assert!(
            !joined.contains("kvm") && !joined.contains("-gdb"),
            "{joined}"
        );
        assert!(!joined.contains("isa-debug-exit"), "{joined}");
        assert!(
            joined.contains("-kernel /runs/c/faults/7/x.img"),
            "{joined}"
        );
        assert!(joined.contains("file=/runs/c/faults/7/token"), "{joined}");
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:5000-:80,hostfwd=tcp:127.0.0.1:5001-:81"),
            "{joined}"
        );
        assert!(
            joined.contains("rr=record,rrfile=/runs/c/faults/7/rr.bin,rrsnapshot=init"),
            "{joined}"
        );
        assert!(joined.contains("filter-replay,id=rr-net,netdev=n0"));
        assert!(joined.contains("janus.node=stable-0 ip=10.0.2.15/24"));
        let rep = rr_args(&node, dir, &dir.join("x.img"), false, None).expect("replay args");
        let joined = rep.join(" ");
        assert!(
            joined.contains("rr=replay") && !joined.contains("hostfwd"),
            "{joined}"
        );
        let moved = with_snapshot_drive(&rep, Path::new("/tmp/s.qcow2")).expect("drive");
        assert!(moved.iter().any(|a| a == "file=/tmp/s.qcow2,if=none,id=rr"));
        assert!(
            rr_args(
                &node,
                Path::new("/a,b"),
                Path::new("/a,b/x.img"),
                true,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn console_without_qemu_messages() {
        assert_eq!(
            guest_lines("a\nqemu-system-x86_64: terminating on signal 15\nb"),
            "a\nb"
        );
    }
}

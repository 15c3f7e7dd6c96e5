//! `janus up | ps | logs | down`: a local mixed cluster (unikernel nodes under QEMU, process nodes,
//! the router) run by the supervisor from a run directory of its own.
//!
//! `janus up` is here (`libvirt_nodes`: stable nodes as libvirt domains; `router_config`: the
//! router's settings); `procs` holds what every command needs about a cluster's processes (ports,
//! admin calls, liveness), and `ps`, `logs`, `down` are the other commands.

mod down;
mod libvirt_nodes;
mod logs;
mod procs;
mod ps;
mod router_config;

pub use down::down;
use down::reap_leftovers;
pub use logs::logs;
pub(crate) use procs::which;
pub use procs::{admin_get, free_addr, healthy, is_zombie, pid_alive};
pub use ps::ps;
pub(crate) use router_config::router_settings;

use libvirt_nodes::libvirt_stable_nodes;
use router_config::router_config;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::build::{Flavor, Layout, cargo, run_cargo};
use crate::cluster::{ClusterFile, EngineKind, run_dir};
use crate::flavor::uk::{Accel, Machine};
use crate::launch::NodeOpts;
use crate::secret::random_token;
use crate::supervisor::{ClusterState, Plan, ProcSpec, Role, write_json_atomic};

/// The ports of one cluster, each bound (and held) from the moment it is chosen until the cluster's
/// processes are about to start: no two listeners of a cluster can be given the same port (binding
/// `:0` and closing at once let the kernel hand the same port out again). They are taken below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where the outgoing connections of a
/// loaded machine (the router's own, a benchmark's) never land on them between release and use.
pub struct PortSet {
    held: Vec<std::net::TcpListener>,
    next: u16,
    low: u16,
}

impl PortSet {
    pub fn new() -> Self {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(32768u16);
        let low = (ephemeral_low / 2).max(1024);
        let span = ephemeral_low.saturating_sub(low).max(1);
        // A random start, so clusters brought up one after another do not probe the same ports.
        let start = random_token()
            .ok()
            .and_then(|t| u16::from_str_radix(t.get(..4)?, 16).ok())
            .unwrap_or(0)
            % span;
        Self {
            held: Vec::new(),
            next: low + start,
            low,
        }
    }

    /// A port on `ip` nobody (this cluster included) listens on, held until [`PortSet::release`].
    pub fn take(&mut self, ip: std::net::IpAddr) -> anyhow::Result<SocketAddr> {
        let high = self.low.saturating_add(self.low);
        for _ in 0..4096 {
            let port = self.next;
            self.next = if port + 1 >= high { self.low } else { port + 1 };
            if let Ok(l) = std::net::TcpListener::bind((ip, port)) {
                let addr = l.local_addr()?;
                self.held.push(l);
                return Ok(addr);
            }
        }
        // Below the ephemeral range is full: any port the kernel gives, still held.
        let l = std::net::TcpListener::bind((ip, 0))?;
        let addr = l.local_addr()?;
        self.held.push(l);
        Ok(addr)
    }

    /// Closes the held sockets: their owners are about to bind them.
    pub fn release(&mut self) {
        self.held.clear();
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::new()
    }
}

fn spinner(mp: &MultiProgress, msg: String) -> ProgressBar {
    let pb = mp.add(ProgressBar::new_spinner());
    pb.set_style(
        ProgressStyle::with_template("{spinner:.cyan} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(msg);
    pb
}

/// Makes sure `qemu-system-x86_64` is there: installs it with apt-get when running as root on Debian,
/// else says exactly what to run.
pub fn ensure_qemu() -> anyhow::Result<()> {
    if which("qemu-system-x86_64") {
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    if root && which("apt-get") {
        eprintln!("janus: qemu-system-x86_64 is missing; installing qemu-system-x86 with apt-get");
        let ok = Command::new("sh")
            .arg("-c")
            .arg("DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok && which("qemu-system-x86_64") {
            return Ok(());
        }
    }
    bail!(
        "qemu-system-x86_64 is required to boot the unikernel nodes: install it with `sudo apt-get install -y qemu-system-x86` (or set stable.count = 0)"
    )
}
/// Builds the lb-router binary (release, sharing the unix builds' target dir); returns its path.
pub fn build_router(layout: &Layout) -> anyhow::Result<PathBuf> {
    let target = layout.target_dir("unix");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "lb-router",
        "--bin",
        "lb-router",
    ])
    .arg("--manifest-path")
    .arg(layout.home.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target);
    run_cargo(cmd, "lb-router")?;
    Ok(target.join("release/lb-router"))
}

/// What `janus up` started.
#[derive(Debug, Clone)]
pub struct UpResult {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The plan.
    pub plan: Plan,
}

/// `janus up`: builds, starts the supervisor, waits until everything is healthy.
pub fn up(cluster_file: Option<&Path>) -> anyhow::Result<UpResult> {
    up_cluster(&ClusterFile::load(cluster_file)?)
}

/// `janus up` of an already loaded cluster.
pub fn up_cluster(cluster: &ClusterFile) -> anyhow::Result<UpResult> {
    let mut cluster = cluster.clone();
    let dir = run_dir(&cluster.name);
    if let Ok(state) = ClusterState::read(&dir) {
        if pid_alive(state.supervisor_pid) && !is_zombie(state.supervisor_pid) {
            bail!(
                "cluster '{}' is already up (supervisor pid {}); run `janus down{}` first",
                cluster.name,
                state.supervisor_pid,
                cluster_flag(&cluster.name)
            );
        }
        // A supervisor that died without stopping its processes (SIGKILL): reap what it left.
        reap_leftovers(&state);
    }
    let mut ports = PortSet::new();
    for (key, addr) in [
        ("router.listen", &mut cluster.router.listen),
        ("router.admin", &mut cluster.router.admin),
    ] {
        if addr.port() == 0 {
            *addr = ports.take(addr.ip())?;
        } else {
            match std::net::TcpListener::bind(*addr) {
                Ok(l) => ports.held.push(l),
                Err(_) => {
                    bail!("{key} = {addr} is in use: pick another address in the cluster file")
                }
            }
        }
    }
    let cluster = &cluster;
    let uk_nodes = cluster.stable.count > 0 && cluster.stable.flavor == Flavor::Uk;
    if uk_nodes {
        ensure_qemu()?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("state.json"));
    let layout = Layout::new();
    let build_log = dir.join("build.log");
    crate::build::set_output_log(Some(build_log.clone()));
    let mp = MultiProgress::new();
    let svc_name = cluster
        .service
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let built = (|| -> anyhow::Result<_> {
        let pb = spinner(&mp, format!("building {svc_name} (unix, instrumented)"));
        let unix = crate::build(&cluster.service, Flavor::Unix)?;
        pb.finish_with_message(format!("built {}", unix.path.display()));
        let uk = if uk_nodes {
            let pb = spinner(&mp, format!("building {svc_name} (uk, unikernel image)"));
            let uk = crate::build(&cluster.service, Flavor::Uk)?;
            pb.finish_with_message(format!("built {}", uk.path.display()));
            Some(uk)
        } else {
            None
        };
        let pb = spinner(&mp, "building lb-router".to_string());
        let router = build_router(&layout)?;
        pb.finish_with_message(format!("built {}", router.display()));
        Ok((unix, uk, router))
    })();
    crate::build::set_output_log(None);
    let (unix, uk, router_bin) = built.map_err(|e| {
        e.context(format!(
            "build failed; cargo's output is in {}",
            build_log.display()
        ))
    })?;
    let machine = if cluster.stable.machine == "q35" {
        Machine::Q35
    } else {
        Machine::Microvm
    };
    let accel = match cluster.stable.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => Accel::Auto,
    };
    let mut procs = Vec::new();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    // uk nodes' token files, for QEMU to read at every (re)start.
    let secret_dir = dir.join("secrets");
    crate::secret::private_dir(&secret_dir)?;
    // `follow`: a twin's leader (its admin address and token).
    let mut node_spec = |id: String,
                         role: Role,
                         flavor: Flavor,
                         follow: Option<(SocketAddr, String)>|
     -> anyhow::Result<ProcSpec> {
        let listen = ports.take(loopback)?;
        let admin = ports.take(loopback)?;
        let token = random_token()?;
        let opts = NodeOpts {
            listen: Some(listen),
            admin: Some(admin),
            admin_token: Some(token.clone()),
            node_id: Some(id.clone()),
            log_level: (flavor == Flavor::Unix).then(|| cluster.debug.log_level.clone()),
            memory_mib: cluster.stable.memory_mib,
            machine: crate::launch::MachineArg(machine),
            accel: crate::launch::AccelArg(accel),
            secret_dir: Some(secret_dir.clone()),
            gdbstub: match flavor == Flavor::Uk && cluster.stable.gdbstub.enabled_for(&id) {
                true => Some(crate::debug::prepare_gdbstub(&dir, &id)?),
                false => None,
            },
            follow: follow.as_ref().map(|f| f.0),
            follow_token: follow.map(|f| f.1),
            ..NodeOpts::default()
        };
        let artifact = match flavor {
            Flavor::Unix => &unix,
            Flavor::Uk => uk.as_ref().context("no uk artifact")?,
        };
        let mut cmd = crate::launch::command(artifact, &opts)?;
        if role == Role::Twin {
            cmd.env(
                "JANUS_MIRROR_WAIT_MS",
                cluster.debug.twin_mirror_wait_ms.to_string(),
            )
            .env(
                "JANUS_REPLAY_DELAY_MS",
                cluster.debug.twin_replay_delay_ms.to_string(),
            );
        }
        Ok(ProcSpec {
            id,
            role,
            kind: flavor.as_str().to_string(),
            program: PathBuf::from(cmd.get_program()),
            args: cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env: cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
                .collect(),
            listen,
            admin,
            token,
            listen_on_stdin: false,
            domain: None,
        })
    };
    let mut libvirt_networks = Vec::new();
    if cluster.engine.kind == EngineKind::Libvirt {
        let uk = uk.as_ref().context("no uk artifact")?;
        let (specs, networks) = libvirt_stable_nodes(cluster, &dir, uk, &svc_name, &secret_dir)?;
        procs.extend(specs);
        libvirt_networks = networks;
    } else {
        for i in 0..cluster.stable.count {
            procs.push(node_spec(
                format!("stable-{i}"),
                Role::Stable,
                cluster.stable.flavor,
                None,
            )?);
        }
    }
    for i in 0..cluster.stable.count {
        let leader = &procs[i as usize];
        if cluster.debug.twins.enabled_for(&leader.id) {
            let follow = Some((leader.admin, leader.token.clone()));
            procs.push(node_spec(
                twin_id(&leader.id),
                Role::Twin,
                Flavor::Unix,
                follow,
            )?);
        }
    }
    for i in 0..cluster.debug.count {
        procs.push(node_spec(
            format!("debug-{i}"),
            Role::Debug,
            Flavor::Unix,
            None,
        )?);
    }
    for i in 0..cluster.debug.spare {
        procs.push(node_spec(
            format!("spare-{i}"),
            Role::Spare,
            Flavor::Unix,
            None,
        )?);
    }
    let router_token = random_token()?;
    let router_toml = router_config(cluster, &procs, &router_token, &dir)?;
    let router_cfg_path = dir.join("router.toml");
    // Holds the router's and every node's admin token.
    crate::secret::write_private(&router_cfg_path, router_toml.as_bytes())?;
    procs.push(ProcSpec {
        id: "router".into(),
        role: Role::Router,
        kind: "router".into(),
        program: router_bin,
        args: vec![
            "--config".into(),
            router_cfg_path.to_string_lossy().into_owned(),
            "--listen-stdin".into(),
        ],
        env: Vec::new(),
        listen: cluster.router.listen,
        admin: cluster.router.admin,
        token: router_token,
        listen_on_stdin: true,
        domain: None,
    });
    let plan = Plan {
        cluster: cluster.name.clone(),
        service: svc_name,
        procs,
        backoff_initial_ms: cluster.restart.backoff_initial_ms,
        backoff_max_ms: cluster.restart.backoff_max_ms,
        libvirt_networks,
    };
    write_json_atomic(&dir.join("plan.json"), &plan)?;
    ports.release();
    start_supervisor(&dir)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_healthy(&mp, &dir, &plan, deadline)?;
    wait_router_admits(&mp, &plan, deadline)?;
    Ok(UpResult { run_dir: dir, plan })
}

/// The id of stable node `stable`'s twin.
pub fn twin_id(stable: &str) -> String {
    format!("twin-{stable}")
}

fn cluster_flag(name: &str) -> String {
    if name == "default" {
        String::new()
    } else {
        format!(" --cluster {name}")
    }
}

fn start_supervisor(dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the janus executable")?;
    let log = std::fs::File::create(dir.join("supervisor.log"))?;
    Command::new(exe)
        .arg("supervise")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal that ran `janus up` does not reach it.
        .process_group(0)
        .spawn()
        .context("cannot start the supervisor")?;
    Ok(())
}

/// Polls every process's admin `/health` until all answer 200.
fn wait_healthy(
    mp: &MultiProgress,
    dir: &Path,
    plan: &Plan,
    deadline: Instant,
) -> anyhow::Result<()> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let bars: Vec<(ProgressBar, &ProcSpec)> = plan
        .procs
        .iter()
        .map(|p| (spinner(mp, format!("starting {} ({})", p.id, p.kind)), p))
        .collect();
    let started = Instant::now();
    let mut pending: Vec<usize> = (0..bars.len()).collect();
    while !pending.is_empty() {
        pending.retain(|&i| {
            let (pb, p) = &bars[i];
            if healthy(p) {
                pb.finish_with_message(format!(
                    "{} ({}) healthy after {:.2}s",
                    p.id,
                    p.kind,
                    started.elapsed().as_secs_f64()
                ));
                false
            } else {
                true
            }
        });
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = pending.iter().map(|&i| bars[i].1.id.as_str()).collect();
            bail!(
                "not healthy after {timeout:?}: {} (logs in {}/logs; `janus down` cleans up)",
                names.join(", "),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Polls the router's `/pools` until it has every stable and debug node of the plan in its pools
/// as `healthy`: a node answering its own `/health` may still be one the router's first health
/// checks found closed (a unikernel booting on a loaded host), and until the router admits it
/// requests go elsewhere. `janus up` returns once the cluster serves as planned.
fn wait_router_admits(mp: &MultiProgress, plan: &Plan, deadline: Instant) -> anyhow::Result<()> {
    let Some(router) = plan.procs.iter().find(|p| p.role == Role::Router) else {
        return Ok(());
    };
    let want: Vec<&str> = plan
        .procs
        .iter()
        .filter(|p| matches!(p.role, Role::Stable | Role::Debug))
        .map(|p| p.id.as_str())
        .collect();
    let pb = spinner(mp, format!("router admitting {} nodes", want.len()));
    let started = Instant::now();
    loop {
        let states: Vec<(String, String)> = admin_get(router, "/pools")
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.json().ok())
            .map(|v: serde_json::Value| {
                v["pools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|p| p["nodes"].as_array().cloned().unwrap_or_default())
                    .map(|n| {
                        let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
                        (field("id"), field("state"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let waiting: Vec<&str> = want
            .iter()
            .copied()
            .filter(|id| !states.iter().any(|(n, st)| n == id && st == "healthy"))
            .collect();
        if waiting.is_empty() {
            pb.finish_with_message(format!(
                "router admitted {} nodes after {:.2}s",
                want.len(),
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the router has not admitted {} as healthy (its /pools: {states:?}; `janus down` cleans up)",
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prints where everything is.
pub fn describe(up: &UpResult) -> String {
    let mut s = String::new();
    let router = up.plan.procs.iter().find(|p| p.role == Role::Router);
    let _ = writeln!(
        s,
        "cluster '{}' ({}) is up; run directory {}",
        up.plan.cluster,
        up.plan.service,
        up.run_dir.display()
    );
    if let Some(r) = router {
        let _ = writeln!(
            s,
            "  router   http://{}/   (admin http://{}, token in {}/router.toml)",
            r.listen,
            r.admin,
            up.run_dir.display()
        );
    }
    for p in up.plan.procs.iter().filter(|p| p.role != Role::Router) {
        let _ = writeln!(
            s,
            "  {:<9} {:<6} {:<5} http://{}  admin http://{}",
            p.id,
            format!("{:?}", p.role).to_lowercase(),
            p.kind,
            p.listen,
            p.admin
        );
    }
    let _ = writeln!(
        s,
        "next: `janus ps`, `janus logs NODE --follow`, `janus faults list`, `janus down`"
    );
    s
}

//! `janus`: build a service as a unix process or a unikernel image, and run it.
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use janus::{Flavor, NodeOpts};

#[derive(Parser)]
#[command(
    name = "janus",
    version,
    about = "One HTTP service, two builds: unix process and unikernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Build a service; prints the artifact path as the last line.
    Build {
        /// The service crate directory.
        service: PathBuf,
        /// unix (instrumented process) or uk (unikernel image).
        #[arg(long, default_value = "unix")]
        flavor: Flavor,
        /// Cargo profile of a unix build: checked (optimised, overflow-checks and
        /// debug-assertions on in the service and Janus's crates) or release (the unikernel's
        /// semantics). uk is always release.
        #[arg(long, value_enum)]
        profile: Option<janus::build::UnixProfile>,
    },
    /// Build and run one node in the foreground.
    Run {
        /// The service crate directory.
        service: PathBuf,
        /// unix (instrumented process) or uk (unikernel image under QEMU).
        #[arg(long, default_value = "unix")]
        flavor: Flavor,
        /// Cargo profile of a unix build: checked (default) or release.
        #[arg(long, value_enum)]
        profile: Option<janus::build::UnixProfile>,
        #[command(flatten)]
        node: NodeOpts,
    },
    /// Start a local mixed cluster (unikernel + process nodes behind the router) from a cluster file
    /// (optional: the defaults run the faulty sample on 3 stable + 1 debug nodes).
    Up {
        /// The cluster file.
        cluster: Option<PathBuf>,
    },
    /// Write the files that run a cluster file's pools on an orchestrator, offline (nothing is
    /// built, pushed or applied): Kubernetes manifests (KubeVirt VirtualMachines for the unikernel
    /// nodes) or a Nomad job. See docs/DEPLOY.md.
    Deploy {
        /// What to write: kubernetes or nomad.
        #[arg(long, value_name = "KIND")]
        emit: janus::deploy::Target,
        /// Output directory (created when missing).
        dir: PathBuf,
        /// The cluster file (the defaults of `janus up` without one).
        #[arg(long = "file", short = 'f', value_name = "CLUSTER_FILE")]
        file: Option<PathBuf>,
        /// Container image repository prefix (kubernetes).
        #[arg(long, default_value_t = janus::deploy::DeployOpts::default().image_repo)]
        image_repo: String,
        /// Image tag (kubernetes) and artifact version directory (nomad).
        #[arg(long, default_value_t = janus::deploy::DeployOpts::default().tag)]
        tag: String,
        /// Base URL Nomad clients download the artifacts from (nomad).
        #[arg(long, default_value_t = janus::deploy::DeployOpts::default().artifacts)]
        artifacts: String,
        /// Machine of the unikernel nodes under Nomad's qemu driver: pc (any Nomad) or microvm
        /// (Nomad 2.0 and later, through `machine_type`).
        #[arg(long, value_name = "MACHINE", default_value = "pc")]
        nomad_machine: janus::deploy::NomadMachine,
    },
    /// The cluster's processes: state, uptime, restarts, last exit reason, requests served.
    Ps {
        /// Cluster name.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A node's console and log.
    Logs {
        /// Node id (see `janus ps`).
        node: String,
        /// Cluster name.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// How many lines of history.
        #[arg(long, short = 'n', default_value_t = 200)]
        lines: usize,
    },
    /// Stop the cluster: every VM and process, and the supervisor.
    Down {
        /// Cluster name.
        #[arg(long, default_value = "default")]
        cluster: String,
    },
    /// The main job: bring up the faulty sample on unikernel + process nodes behind the router, trigger
    /// its bugs on stable nodes, capture and reproduce every fault, print a summary, tear down.
    Demo {
        /// Also print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The router's captured faults: list, show, reproduce on a debug node, export as a test.
    Faults {
        #[command(subcommand)]
        cmd: FaultsCmd,
        /// Cluster name.
        #[arg(long, global = true, default_value = "default")]
        cluster: String,
    },
    /// gdb on a running node: a unikernel through QEMU's gdbstub (enable it with `gdbstub` under
    /// [stable] in the cluster file), a process node by its pid. With --exec, gdb runs the commands
    /// in batch mode and detaches (the node keeps running); without, gdb is interactive.
    Debug {
        /// Node id (see `janus ps`); not needed with --socket.
        #[arg(required_unless_present = "socket")]
        node: Option<String>,
        /// Cluster name.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// A gdb command to run in batch mode (repeatable, run in order), e.g. --exec bt.
        #[arg(long = "exec", short = 'e', value_name = "CMD")]
        exec: Vec<String>,
        /// Attach to this gdbstub socket instead (a node started with `janus run --gdbstub SOCKET`).
        #[arg(long, requires = "elf", conflicts_with = "node")]
        socket: Option<PathBuf>,
        /// The unstripped ELF of that node's image (with --socket).
        #[arg(long)]
        elf: Option<PathBuf>,
    },
    /// A live terminal view of the cluster: nodes, req/s, errors, p99, faults in the last minute.
    Top {
        /// Cluster name.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Print one frame as plain text and exit (for scripts).
        #[arg(long)]
        once: bool,
    },
    /// (internal) Run the supervisor of a run directory in the foreground.
    #[command(hide = true)]
    Supervise {
        /// The run directory.
        run_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum FaultsCmd {
    /// Table of faults, newest first.
    List {
        /// Only this kind (fault, divergence).
        #[arg(long)]
        kind: Option<String>,
        /// Only this route prefix.
        #[arg(long)]
        route: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One fault: the request, both outcomes, the debug trace.
    Show {
        /// Fault id.
        id: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Mirror the stable node's state (as of the seq before the request) into a debug node, replay the
    /// request there and judge. Exit status 0: reproduced (also without the state) or
    /// state-dependent (only with it); 3: not reproduced; 4: build-specific (the builds differ on
    /// the same state); 5: inconclusive (the replay could not be judged).
    Repro {
        /// Fault id.
        id: i64,
        /// Replay on a fresh, empty state instead of the mirrored one.
        #[arg(long)]
        without_state: bool,
        /// Seconds before the replay counts as a hang.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Record a unikernel fault for time travel: boot a spare of the failing node under QEMU's
    /// record mode (TCG), restore the mirrored state, replay the request; keep the recording in
    /// <run-dir>/faults/ID/ when the fault reproduces (and a replay of it matches). Exit status 0:
    /// recorded; 3: not reproduced under record.
    Record {
        /// Fault id.
        id: i64,
        /// Seconds the recorded node may take to boot and to fail (TCG is slow).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Recordings to try before giving up on one that replays.
        #[arg(long, default_value_t = 4)]
        attempts: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Replay a recorded fault under gdb, stopped at the fault (the panic handler or the exit):
    /// reverse-stepi and reverse-continue walk back into the service code. With --exec, gdb runs
    /// the commands in batch mode; without, gdb is interactive.
    Timetravel {
        /// Fault id.
        id: i64,
        /// A gdb command to run in batch mode (repeatable, run in order), e.g. --exec bt.
        #[arg(long = "exec", short = 'e', value_name = "CMD")]
        exec: Vec<String>,
        /// Seconds a batch session may take (each reverse step replays from the recording's start).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Also print the replayed guest console after the session.
        #[arg(long)]
        console: bool,
    },
    /// Write the request, the mirrored state and the expected outcome as a conformance case.
    Export {
        /// Fault id.
        id: i64,
        /// Output directory.
        #[arg(long = "as-test", value_name = "DIR")]
        as_test: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("janus: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Build {
            service,
            flavor,
            profile,
        } => {
            let a = janus::progress::build(&service, flavor, unix_profile(flavor, profile)?)?;
            eprintln!(
                "janus: requirements written to {}",
                a.requirements.display()
            );
            if let Some(elf) = &a.debug_elf {
                eprintln!("janus: unstripped ELF for gdb: {}", elf.display());
            }
            println!("{}", a.path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            service,
            flavor,
            profile,
            node,
        } => {
            let a = janus::progress::build(&service, flavor, unix_profile(flavor, profile)?)?;
            let mut cmd = janus::launch::command(&a, &node)?;
            // Replace this process: signals and the exit status are the node's own.
            let err = cmd.exec();
            anyhow::bail!("cannot start {}: {err}", a.path.display())
        }
        Cmd::Up { cluster } => {
            let up = janus::up::up(cluster.as_deref())?;
            print!("{}", janus::up::describe(&up));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Deploy {
            emit,
            dir,
            file,
            image_repo,
            tag,
            artifacts,
            nomad_machine,
        } => {
            let cluster = janus::cluster::ClusterFile::load(file.as_deref())?;
            let opts = janus::deploy::DeployOpts {
                image_repo,
                tag,
                artifacts,
                nomad_machine,
            };
            let out = janus::deploy::emit(emit, &cluster, &dir, &opts)?;
            for f in &out.files {
                println!("{}", f.display());
            }
            for n in &out.notes {
                eprintln!("janus: note: {n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ps { cluster, json } => {
            print!("{}", janus::up::ps(&cluster, json)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs {
            node,
            cluster,
            follow,
            lines,
        } => {
            janus::up::logs(&cluster, &node, lines, follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { cluster } => {
            println!("{}", janus::up::down(&cluster)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Faults { cmd, cluster } => faults(cmd, &cluster),
        Cmd::Demo { json } => {
            let summary = janus::demo::demo(&mut |s: &str| {
                use std::io::Write;
                print!("{s}");
                let _ = std::io::stdout().flush();
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(if summary.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Debug {
            node,
            cluster,
            exec,
            socket,
            elf,
        } => {
            let (target, script_dir) = match (socket, elf, node) {
                (Some(socket), Some(elf), _) => (
                    janus::debug::Target::Qemu {
                        socket,
                        elf,
                        accel: None,
                    },
                    std::env::temp_dir().join("janus-gdb"),
                ),
                (_, _, Some(node)) => janus::debug::cluster_target(&cluster, &node)?,
                _ => anyhow::bail!("name a NODE, or give --socket and --elf"),
            };
            let code = janus::debug::run(&target, &exec, &script_dir)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Cmd::Top { cluster, once } => {
            if once {
                print!("{}", janus::top::once(&cluster)?);
            } else {
                janus::top::interactive(&cluster)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Supervise { run_dir } => {
            janus::supervisor::supervise(&run_dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn faults(cmd: FaultsCmd, cluster: &str) -> anyhow::Result<ExitCode> {
    match cmd {
        FaultsCmd::List {
            kind,
            route,
            limit,
            json,
        } => {
            let filter = lb_router::FaultFilter {
                kind,
                route,
                limit: Some(limit),
                ..lb_router::FaultFilter::default()
            };
            print!("{}", janus::faults::list(cluster, &filter, json)?);
        }
        FaultsCmd::Show { id, json } => print!("{}", janus::faults::show(cluster, id, json)?),
        FaultsCmd::Repro {
            id,
            without_state,
            timeout,
            json,
        } => {
            let opts = janus::faults::ReproOpts {
                cluster: cluster.to_string(),
                without_state,
                timeout: std::time::Duration::from_secs(timeout),
            };
            let report = janus::faults::repro(id, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", janus::faults::render_report(&report));
            }
            let code = report.verdict.exit_code();
            if code != 0 {
                return Ok(ExitCode::from(code));
            }
        }
        FaultsCmd::Record {
            id,
            timeout,
            attempts,
            json,
        } => {
            let opts = janus::faults::timetravel::RecordOpts {
                cluster: cluster.to_string(),
                timeout: std::time::Duration::from_secs(timeout),
                attempts,
            };
            let report = janus::faults::timetravel::record(id, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.summary);
            }
            if !report.reproduced {
                return Ok(ExitCode::from(3));
            }
        }
        FaultsCmd::Timetravel {
            id,
            exec,
            timeout,
            console,
        } => {
            let (code, text) = janus::faults::timetravel::timetravel(
                cluster,
                id,
                &exec,
                std::time::Duration::from_secs(timeout),
            )?;
            if console {
                println!("---- replayed guest console ----\n{text}");
            }
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        FaultsCmd::Export { id, as_test } => {
            let path = janus::faults::export(cluster, id, &as_test)?;
            println!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--profile` applies to the unix build only: the unikernel keeps release semantics.
fn unix_profile(
    flavor: Flavor,
    profile: Option<janus::build::UnixProfile>,
) -> anyhow::Result<janus::build::UnixProfile> {
    match (flavor, profile) {
        (Flavor::Uk, Some(p)) => anyhow::bail!(
            "--profile {} is for --flavor unix: the unikernel image is always built with release semantics",
            p.as_str()
        ),
        (_, p) => Ok(p.unwrap_or_default()),
    }
}

//! `janus debug NODE`: gdb on a running node of a cluster.
//!
//! A unikernel node runs under QEMU with a gdbstub on a per-node Unix socket in the run directory
//! (`<run-dir>/gdb/<node>.sock`, only when the cluster file asks for it: `[stable] gdbstub = true` or
//! a list of node ids). gdb is started with the unstripped ELF kept beside the image (symbols, line
//! tables, types and unwind tables), Rust's pretty printers from the toolchain (as `rust-gdb` does),
//! `/rustc/<commit>` mapped to the toolchain's sources, and `janus-gdb.py`: an unwinder from the
//! kernel's CPL0 stubs (where an idle node always stops) into the interrupted Rust code, a
//! `janus-store` command, and, under this host's nested KVM, guards that keep gdb from planting a
//! software breakpoint (it would kill the node). A process node gets `gdb -p PID`.
//!
//! With `--exec CMD` (repeatable) gdb runs in batch mode and detaches at the end, so the node goes
//! on serving; without it, gdb is interactive (`detach` or `quit` leaves the node running).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cluster::run_dir;
use crate::flavor::uk::{gdbstub_of, image_and_accel_of};
use crate::supervisor::{ClusterState, Role};

/// The gdb helper script (unwinder, `janus-store`, nested-KVM guards).
pub const GDB_SCRIPT: &str = include_str!("janus-gdb.py");

/// The gdb script of `janus faults timetravel` (reverse-continue over QMP, see the script).
pub const TIMETRAVEL_SCRIPT: &str = include_str!("janus-timetravel.py");

/// The gdbstub socket of a node in a run directory.
pub fn gdbstub_socket(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join("gdb").join(format!("{node}.sock"))
}

/// [`gdbstub_socket`], with its directory created (QEMU needs it before it listens).
pub fn prepare_gdbstub(run_dir: &Path, node: &str) -> anyhow::Result<PathBuf> {
    let sock = gdbstub_socket(run_dir, node);
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Checks the length now, so `janus up` fails before anything starts.
    crate::flavor::uk::gdbstub_arg(&sock)?;
    Ok(sock)
}

/// What gdb attaches to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A unikernel under QEMU's gdbstub.
    Qemu {
        /// The gdbstub's Unix socket.
        socket: PathBuf,
        /// The unstripped ELF of the image.
        elf: PathBuf,
        /// QEMU's accelerator (`kvm`, `tcg`), when known.
        accel: Option<String>,
    },
    /// A process node.
    Process {
        /// Its pid.
        pid: u32,
        /// Its executable.
        program: PathBuf,
    },
}

/// Whether this host's KVM is the nested paravirtual one (kvm_pvm), under which guest debugging
/// (breakpoints, single steps at CPL3) does not work (see docs/DEBUGGING.md).
pub fn nested_pvm_kvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The toolchain's `lib/rustlib/etc` (Rust's gdb pretty printers) and its commit hash.
fn rust_gdb_support() -> Option<(PathBuf, Option<String>)> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let etc = sysroot.join("lib/rustlib/etc");
    if !etc.join("gdb_load_rust_pretty_printers.py").is_file() {
        return None;
    }
    let commit = Command::new(&rustc)
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("commit-hash: ").map(str::to_string))
        })
        .filter(|c| c != "unknown");
    Some((etc, commit.map(|c| format!("{c}\n{}", sysroot.display()))))
}

/// Writes `janus-gdb.py` into `dir` (atomically: concurrent sessions read a whole file).
fn write_script(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("janus-gdb.py");
    let tmp = dir.join(format!("janus-gdb.py.{}", std::process::id()));
    std::fs::write(&tmp, GDB_SCRIPT).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Quotes a string for a gdb Python one-liner.
pub(crate) fn py_str(s: &str) -> String {
    let mut q = String::from("'");
    for c in s.chars() {
        match c {
            '\\' | '\'' => {
                q.push('\\');
                q.push(c);
            }
            _ => q.push(c),
        }
    }
    q.push('\'');
    q
}

/// The gdb command for a target: batch mode running `exec` then detaching when `exec` is not empty,
/// interactive otherwise. `script_dir` receives `janus-gdb.py`.
pub fn gdb_command(target: &Target, exec: &[String], script_dir: &Path) -> anyhow::Result<Command> {
    gdb_command_with(target, &[], exec, script_dir)
}

/// [`gdb_command`] that first runs `pre` once attached (`janus faults timetravel` stops at the
/// fault with it); batch mode still depends on `exec` alone.
pub fn gdb_command_with(
    target: &Target,
    pre: &[String],
    exec: &[String],
    script_dir: &Path,
) -> anyhow::Result<Command> {
    if !crate::up::which("gdb") {
        bail!("gdb is not installed: install it with `apt-get install -y gdb`");
    }
    let mut cmd = Command::new("gdb");
    cmd.args(["-q", "-nx"]);
    if !exec.is_empty() {
        cmd.arg("-batch");
    }
    let mut iex = |c: String| {
        cmd.arg("-iex").arg(c);
    };
    iex("set pagination off".into());
    iex("set confirm off".into());
    let rust = rust_gdb_support();
    if let Some((etc, commit)) = &rust {
        iex(format!("add-auto-load-safe-path {}", etc.display()));
        if let Some(c) = commit
            && let Some((hash, sysroot)) = c.split_once('\n')
        {
            iex(format!(
                "set substitute-path /rustc/{hash} {sysroot}/lib/rustlib/src/rust"
            ));
        }
    }
    if let Some((etc, _)) = &rust {
        let mut pythonpath = std::env::var_os("PYTHONPATH").unwrap_or_default();
        if !pythonpath.is_empty() {
            pythonpath.push(":");
        }
        pythonpath.push(etc.as_os_str());
        cmd.env("PYTHONPATH", pythonpath);
        cmd.arg("-ex").arg(format!(
            "source {}",
            etc.join("gdb_load_rust_pretty_printers.py").display()
        ));
    }
    match target {
        Target::Qemu { socket, elf, accel } => {
            if !elf.is_file() {
                bail!(
                    "the unstripped ELF {} is missing (it is written beside the image by \
                     `janus build --flavor uk`): rebuild the image",
                    elf.display()
                );
            }
            let script = write_script(script_dir)?;
            cmd.arg("-ex").arg(format!("source {}", script.display()));
            cmd.arg("-ex").arg(format!(
                "python janus_attach({})",
                py_str(&socket.to_string_lossy())
            ));
            if accel.as_deref() != Some("tcg") && nested_pvm_kvm() {
                cmd.arg("-ex").arg("python janus_guard_nested_kvm()");
            }
            for c in pre.iter().chain(exec) {
                cmd.arg("-ex").arg(c);
            }
            if !exec.is_empty() {
                cmd.arg("-ex").arg("detach");
            }
            cmd.arg(elf);
        }
        Target::Process { pid, program } => {
            cmd.arg("-p").arg(pid.to_string());
            for c in exec {
                cmd.arg("-ex").arg(c);
            }
            if !exec.is_empty() {
                cmd.arg("-ex").arg("detach");
            }
            cmd.arg(program);
        }
    }
    Ok(cmd)
}

/// Resolves a cluster node to a gdb target.
pub fn cluster_target(cluster: &str, node: &str) -> anyhow::Result<(Target, PathBuf)> {
    let dir = run_dir(cluster);
    let state = ClusterState::read(&dir)?;
    let Some(p) = state.proc(node) else {
        let ids: Vec<&str> = state
            .procs
            .iter()
            .filter(|p| p.spec.role != Role::Router)
            .map(|p| p.spec.id.as_str())
            .collect();
        bail!(
            "no node '{node}' in cluster '{cluster}' (nodes: {})",
            ids.join(", ")
        );
    };
    let running = p.state == "running" && p.pid.is_some_and(crate::up::pid_alive);
    if !running {
        bail!(
            "node '{node}' is not running (state {}); see `janus ps` and `janus logs {node}`",
            p.state
        );
    }
    let pid = p.pid.unwrap_or_default();
    let target = match p.spec.kind.as_str() {
        "uk" => {
            let Some(socket) = gdbstub_of(&p.spec.args) else {
                bail!(
                    "node '{node}' runs without a gdbstub: set `gdbstub = true` (or \
                     gdbstub = [\"{node}\"]) under [stable] in the cluster file, then `janus down` \
                     and `janus up` it again"
                );
            };
            let (image, accel) = image_and_accel_of(&p.spec.args);
            let image = image.context("the node's QEMU command line names no -kernel image")?;
            Target::Qemu {
                socket,
                elf: image.with_extension("elf"),
                accel,
            }
        }
        "router" => bail!("'{node}' is the router; `janus debug` attaches to nodes"),
        _ => Target::Process {
            pid,
            program: p.spec.program.clone(),
        },
    };
    Ok((target, dir.join("gdb")))
}

/// Runs gdb on a target: batch (prints gdb's output, returns its exit status) or interactive
/// (replaces this process).
pub fn run(target: &Target, exec: &[String], script_dir: &Path) -> anyhow::Result<i32> {
    let mut cmd = gdb_command(target, exec, script_dir)?;
    if exec.is_empty() {
        use std::os::unix::process::CommandExt;
        let what = match target {
            Target::Qemu { socket, .. } => format!("the gdbstub {}", socket.display()),
            Target::Process { pid, .. } => format!("pid {pid}"),
        };
        eprintln!(
            "janus: attaching gdb to {what}; the node does not serve while gdb holds it stopped \
             (`continue` resumes, Ctrl-C stops it again, `detach` or `quit` leaves it running)"
        );
        let err = cmd.exec();
        bail!("cannot start gdb: {err}");
    }
    let status = cmd.status().context("cannot start gdb")?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strings_are_quoted() {
        assert_eq!(py_str("/a b/it's\\x"), "'/a b/it\\'s\\\\x'");
    }

    #[test]
    fn batch_command_attaches_runs_and_detaches() {
        if !crate::up::which("gdb") {
            eprintln!("gdb is not installed; skipping");
            return;
        }
        let dir = std::env::temp_dir().join(format!("janus-debug-unit-{}", std::process::id()));
        let elf = std::env::current_exe().expect("exe");
        let target = Target::Qemu {
            socket: dir.join("n.sock"),
            elf: elf.clone(),
            accel: Some("tcg".into()),
        };
        let cmd = gdb_command(&target, &["bt".into(), "janus-store".into()], &dir).expect("cmd");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pos = |s: &str| args.iter().position(|a| a == s);
        assert!(pos("-batch").is_some(), "{args:?}");
        let attach = args
            .iter()
            .position(|a| a.starts_with("python janus_attach("))
            .expect("attach");
        assert!(attach < pos("bt").expect("bt"));
        assert!(pos("bt") < pos("janus-store"));
        assert!(pos("janus-store") < pos("detach"));
        assert_eq!(args.last().map(PathBuf::from), Some(elf));
        assert!(dir.join("janus-gdb.py").is_file());
        let missing = Target::Qemu {
            socket: dir.join("n.sock"),
            elf: dir.join("nope.elf"),
            accel: None,
        };
        let e = gdb_command(&missing, &[], &dir).expect_err("no ELF");
        assert!(e.to_string().contains("nope.elf"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! The unikernel flavour: builds a service into a PVH-bootable image linked with backend-uk, and
//! prepares the QEMU command that runs it.
//!
//! Build: a wrapper crate is generated under `<workspace>/target/janus-uk/gen/<package>/` with its
//! own `[workspace]`, a copy of the workspace `Cargo.lock` (so it resolves the same versions) and
//! one line of code, `backend_uk::entry!(<lib>::<Type>);`. It is built with
//! `cargo build --release --target x86_64-unknown-linux-gnu` and `CARGO_TARGET_DIR =
//! <workspace>/target/janus-uk`; the kernel flags travel in `CARGO_ENCODED_RUSTFLAGS`, which with
//! an explicit `--target` apply to the image only, never to build scripts or proc macros. The
//! linker script is `backend-uk/linker.ld`. `out_dir` receives `<package>.elf` (unstripped, with
//! line tables, for addr2line/gdb) and `<package>.img` (stripped, what QEMU boots).
//!
//! Run: QEMU with the image as `-kernel`, user networking with `hostfwd` for the service port
//! (guest :80) and the admin port (guest :81), the console on stdout (`-serial stdio`) and
//! isa-debug-exit. The guest reaches the host's 127.0.0.1 through 10.0.2.2. Configuration goes on
//! the kernel command line (see backend-uk's `cmdline` module), except the admin token: the
//! command line is in `/proc/<pid>/cmdline` for every user of the host to read, so the token is
//! written to a 0600 file in [`UkRunOpts::secret_dir`] and QEMU hands it to the guest as the fw_cfg
//! file `opt/janus/token` (backend-uk's `drivers::fw_cfg`).
//!
//! Exit status of the QEMU process (isa-debug-exit maps guest code v to `(v << 1) | 1`):
//! [`EXIT_SHUTDOWN`] 1, [`EXIT_PANIC`] 33 (service or kernel panic; the console holds the
//! `JANUS-PANIC` report and, for a service with a store, the `JANUS-STATE` dump),
//! [`EXIT_CPU_EXCEPTION`] 35, [`EXIT_BOOT_FAILURE`] 37, [`EXIT_OUT_OF_MEMORY`] 39; 253 = fault in
//! a CPL0 stub; 0 or a signal = QEMU itself stopped (killed, or `-no-reboot` after a triple fault).

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::write_if_changed;
use crate::service::is_rust_path;
use anyhow::{Context as _, bail};

/// QEMU exit status after an orderly shutdown.
pub const EXIT_SHUTDOWN: i32 = 1;
/// QEMU exit status after a panic (service or kernel).
pub const EXIT_PANIC: i32 = 33;
/// QEMU exit status after a CPU exception in Rust code.
pub const EXIT_CPU_EXCEPTION: i32 = 35;
/// QEMU exit status when boot could not complete (bad command line, no NIC, service refused to start).
pub const EXIT_BOOT_FAILURE: i32 = 37;
/// QEMU exit status when the heap is exhausted.
pub const EXIT_OUT_OF_MEMORY: i32 = 39;

/// The least guest memory an image boots and serves with (measured by bench/uk.sh; below it the
/// guest exits with [`EXIT_OUT_OF_MEMORY`]).
pub const MIN_MEMORY_MIB: u32 = 2;

/// Guest port of the service listener.
pub const GUEST_SERVICE_PORT: u16 = 80;
/// Guest port of the admin listener.
pub const GUEST_ADMIN_PORT: u16 = 81;

/// What a QEMU exit status means.
pub fn describe_exit(status: Option<i32>) -> &'static str {
    match status {
        Some(EXIT_SHUTDOWN) => "orderly shutdown",
        Some(EXIT_PANIC) => "panic (see JANUS-PANIC on the console)",
        Some(EXIT_CPU_EXCEPTION) => "CPU exception in the guest",
        Some(EXIT_BOOT_FAILURE) => "boot failure (see the console)",
        Some(EXIT_OUT_OF_MEMORY) => "guest out of memory",
        Some(253) => "fault in a CPL0 stub",
        Some(0) => "QEMU stopped (no guest exit code)",
        Some(_) => "QEMU failed",
        None => "killed by a signal",
    }
}

/// A built image.
#[derive(Debug, Clone)]
pub struct UkArtifact {
    /// Stripped image.
    pub image: PathBuf,
    /// Unstripped ELF for gdb.
    pub debug_elf: PathBuf,
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`
    Microvm,
    /// `-M q35`
    Q35,
}

/// Accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when /dev/kvm opens, else TCG.
    Auto,
    /// KVM.
    Kvm,
    /// TCG.
    Tcg,
}

/// How to run an image.
#[derive(Debug, Clone)]
pub struct UkRunOpts {
    /// Host address forwarded to the guest's service port.
    pub listen: SocketAddr,
    /// Host address forwarded to the guest's admin port.
    pub admin: Option<SocketAddr>,
    /// Admin bearer token.
    pub admin_token: String,
    /// Node id.
    pub node_id: String,
    /// Upstream name -> host address.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// Service config overrides.
    pub config: Vec<(String, String)>,
    /// Guest memory.
    pub memory_mib: u32,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// Console log level (`janus.log`); None = the kernel's default (info).
    pub log_level: Option<String>,
    /// Private directory (0700) the admin token file is written to for QEMU to read.
    pub secret_dir: PathBuf,
    /// QEMU's gdbstub on this Unix socket (`janus debug` attaches to it); None = no gdbstub.
    pub gdbstub: Option<PathBuf>,
}

/// The fw_cfg file name the guest reads the admin token from (backend-uk `node::ADMIN_TOKEN_FILE`).
pub const FW_CFG_TOKEN: &str = "opt/janus/token";

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Rust flags that make a static, non-PIE kernel ELF (see /work/shared/UK-NOTES.md).
fn kernel_rustflags(linker_script: &Path, workspace_root: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "-Crelocation-model=static",
        "-Ctarget-feature=+crt-static",
        "-Cno-redzone=yes",
        "-Cforce-frame-pointers=no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-n",
        // The unwind tables (kept for gdb, never loaded) name the personality routine of the
        // precompiled `alloc`; panic = "abort" never calls it.
        "-Wl,--defsym=rust_eh_personality=0",
    ] {
        flags.push(format!("-Clink-arg={arg}"));
    }
    flags.push(format!("-Clink-arg=-T{}", linker_script.display()));
    // Panic locations of registry crates name `smoltcp-0.14.0/src/...` rather than the
    // 60-byte registry directory before it (about 2 KB of the image); gdb finds the sources
    // with `directory <that registry directory>`.
    for dir in registry_source_dirs() {
        flags.push(format!("--remap-path-prefix={}/=", dir.display()));
    }
    // Likewise the workspace's own crates name `backend-uk/src/...`, not the checkout's absolute
    // path (19 of them: the image size no longer depends on where the workspace lives); gdb
    // started in the workspace root finds them.
    let root = workspace_root
        .canonicalize()
        .unwrap_or_else(|_| workspace_root.to_path_buf());
    flags.push(format!("--remap-path-prefix={}/=", root.display()));
    flags
}

/// The directories cargo unpacks registry crates into (`$CARGO_HOME/registry/src/*`).
fn registry_source_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(Ok(entries)) = home.map(|h| std::fs::read_dir(h.join("registry/src"))) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn wrapper_cargo_toml(package: &str, service_dir: &Path, backend_dir: &Path) -> String {
    format!(
        r#"# Generated by janus (uk flavour); do not edit.
[package]
name = "{package}-uk"
version = "0.0.0"
edition = "2024"
publish = false

[[bin]]
name = "{package}-uk"
path = "src/main.rs"
test = false
bench = false

[dependencies]
backend-uk = {{ path = {backend:?}, features = ["kernel"] }}
{package} = {{ path = {service:?} }}

[profile.release]
panic = "abort"
# Size over speed: on a hypervisor the request path's cost is VM exits, not instructions
# (bench/uk.sh), and "z" keeps the hello image under 256 KiB.
opt-level = "z"
lto = true
codegen-units = 1
debug = "full"

[profile.dev]
panic = "abort"

[workspace]
"#,
        backend = backend_dir,
        service = service_dir,
    )
}

fn wrapper_main(lib_name: &str, service_type: &str) -> String {
    format!(
        "// Generated by janus (uk flavour); do not edit.\n#![no_std]\n#![no_main]\n\nbackend_uk::entry!({lib_name}::{service_type});\n"
    )
}

/// Builds the image.
pub fn build(
    service_dir: &Path,
    package: &str,
    lib_name: &str,
    service_type: &str,
    workspace_root: &Path,
    out_dir: &Path,
) -> anyhow::Result<UkArtifact> {
    if !is_rust_path(lib_name) || !is_rust_path(service_type) {
        bail!("'{lib_name}::{service_type}' is not a Rust path to a service type");
    }
    if package.is_empty()
        || !package
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("'{package}' is not a valid package name");
    }
    let backend_dir = workspace_root.join("backend-uk");
    let linker_script = backend_dir.join("linker.ld");
    if !linker_script.is_file() {
        bail!(
            "{} not found: is {} the Janus workspace?",
            linker_script.display(),
            workspace_root.display()
        );
    }
    let service_dir = service_dir
        .canonicalize()
        .with_context(|| format!("service directory {} not found", service_dir.display()))?;
    let target_dir = workspace_root.join("target/janus-uk");
    let gen_dir = target_dir.join("gen").join(package);
    std::fs::create_dir_all(gen_dir.join("src"))
        .with_context(|| format!("cannot create {}", gen_dir.display()))?;
    write_if_changed(
        &gen_dir.join("Cargo.toml"),
        wrapper_cargo_toml(package, &service_dir, &backend_dir).as_bytes(),
    )?;
    write_if_changed(
        &gen_dir.join("src/main.rs"),
        wrapper_main(lib_name, service_type).as_bytes(),
    )?;
    // Cargo does not see the linker script (it travels in the flags): a build script that
    // names it relinks the image when it changes instead of leaving a stale image.
    write_if_changed(
        &gen_dir.join("build.rs"),
        format!(
            "fn main() {{\n    println!(\"cargo:rerun-if-changed={}\");\n}}\n",
            linker_script.display()
        )
        .as_bytes(),
    )?;
    let lock = workspace_root.join("Cargo.lock");
    if lock.is_file() {
        let bytes =
            std::fs::read(&lock).with_context(|| format!("cannot read {}", lock.display()))?;
        write_if_changed(&gen_dir.join("Cargo.lock"), &bytes)?;
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(gen_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            kernel_rustflags(&linker_script, workspace_root).join("\u{1f}"),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    let output = cmd
        .output()
        .context("cannot run cargo to build the unikernel image")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let mut msg = String::new();
        for line in tail.iter().rev() {
            let _ = writeln!(msg, "{line}");
        }
        bail!("building the unikernel image of '{package}' failed:\n{msg}");
    }
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{package}-uk"));
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let debug_elf = out_dir.join(format!("{package}.elf"));
    let image = out_dir.join(format!("{package}.img"));
    std::fs::copy(&built, &debug_elf)
        .with_context(|| format!("cannot copy {} to {}", built.display(), debug_elf.display()))?;
    strip(&debug_elf, &image)?;
    check_pvh_note(&image)?;
    Ok(UkArtifact { image, debug_elf })
}

/// Writes a stripped copy of `elf` to `out` (objcopy, llvm-objcopy or strip, whichever exists).
fn strip(elf: &Path, out: &Path) -> anyhow::Result<()> {
    let mut tried = Vec::new();
    for tool in ["objcopy", "llvm-objcopy", "rust-objcopy"] {
        match Command::new(tool)
            .arg("--strip-all")
            // The unwind tables are for gdb (the ELF kept beside the image), not for the guest.
            .arg("--remove-section=.eh_frame")
            .arg(elf)
            .arg(out)
            .output()
        {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => tried.push(format!(
                "{tool}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => tried.push(format!("{tool}: {e}")),
        }
    }
    bail!(
        "cannot strip {} (install binutils): {}",
        elf.display(),
        tried.join("; ")
    )
}

/// Refuses an image without the Xen PVH entry note (QEMU would not boot it).
fn check_pvh_note(image: &Path) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    std::fs::File::open(image)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", image.display()))?;
    let has_note = bytes.windows(12).any(|w| {
        w[0..4] == 4u32.to_le_bytes()
            && w[4..8] == 8u32.to_le_bytes()
            && w[8..12] == 18u32.to_le_bytes()
    });
    if !bytes.starts_with(b"\x7fELF") || !has_note {
        bail!(
            "{} is not a PVH-bootable ELF (no XEN_ELFNOTE_PHYS32_ENTRY note)",
            image.display()
        );
    }
    Ok(())
}

/// Whether /dev/kvm can be opened for reading and writing.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Escapes a command-line value: `%`, spaces, quotes and control characters become `%XX`
/// (backend-uk's `cmdline::unescape` reverses it).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b == b'%' || b <= b' ' || b == 0x7f || b == b'"' {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

fn check_word(what: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("{what} '{value}' must be non-empty and use only A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

fn host_v4(what: &str, addr: SocketAddr) -> anyhow::Result<(Ipv4Addr, u16)> {
    match addr.ip() {
        IpAddr::V4(ip) => Ok((ip, addr.port())),
        IpAddr::V6(_) => {
            bail!("{what} {addr}: QEMU user networking forwards IPv4 only; use an IPv4 address")
        }
    }
}

/// The guest's view of a host address: loopback becomes 10.0.2.2 (QEMU user networking's
/// gateway, which NATs to the host's 127.0.0.1); other addresses are reached as they are.
pub fn guest_view(addr: SocketAddr) -> anyhow::Result<std::net::SocketAddrV4> {
    let (ip, port) = host_v4("upstream", addr)?;
    let ip = if ip.is_loopback() || ip.is_unspecified() {
        Ipv4Addr::new(10, 0, 2, 2)
    } else {
        ip
    };
    Ok(std::net::SocketAddrV4::new(ip, port))
}

/// The log levels backend-uk's console knows (its `janus.log` word).
const UK_LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The kernel command line for `opts` (see backend-uk's `cmdline` module for the words).
pub fn kernel_cmdline(opts: &UkRunOpts) -> anyhow::Result<String> {
    check_word("node id", &opts.node_id)?;
    let mut words = vec![format!("janus.node={}", opts.node_id)];
    if opts.admin.is_some() {
        // The token itself goes through fw_cfg (see `qemu_command`), not on this line.
        words.push(format!("janus.admin_port={GUEST_ADMIN_PORT}"));
    }
    for (name, addr) in &opts.upstreams {
        check_word("upstream name", name)?;
        words.push(format!("janus.upstream.{name}={}", guest_view(*addr)?));
    }
    for (key, value) in &opts.config {
        check_word("config key", key)?;
        words.push(format!("janus.config.{key}={}", escape(value)));
    }
    if let Some(level) = &opts.log_level {
        if !UK_LOG_LEVELS.contains(&level.as_str()) {
            bail!(
                "log level '{level}': a unikernel node takes one level, one of {}",
                UK_LOG_LEVELS.join(", ")
            );
        }
        words.push(format!("janus.log={level}"));
    }
    words.push(format!("janus.seed={}", crate::secret::random_hex(32)?));
    words.push("ip=10.0.2.15/24".into());
    words.push("gw=10.0.2.2".into());
    Ok(words.join(" "))
}

/// Where [`qemu_command`] writes a node's admin token: `<secret_dir>/<node>-<port>.token` (the
/// listen port keeps two nodes of the same id apart).
pub fn token_file(secret_dir: &Path, node_id: &str, listen_port: u16) -> PathBuf {
    secret_dir.join(format!("{node_id}-{listen_port}.token"))
}

/// Writes the admin token (0600) to [`token_file`] for QEMU's `-fw_cfg`; returns its path.
fn write_token_file(opts: &UkRunOpts) -> anyhow::Result<PathBuf> {
    let token = &opts.admin_token;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the admin token must be non-empty visible ASCII (no spaces or control characters)");
    }
    check_word("node id", &opts.node_id)?;
    crate::secret::private_dir(&opts.secret_dir)?;
    let path = token_file(&opts.secret_dir, &opts.node_id, opts.listen.port());
    crate::secret::write_private(&path, token.as_bytes())?;
    Ok(path)
}

/// The QEMU command line for an image. With an admin listener, writes the token file it names.
pub fn qemu_command(image: &Path, opts: &UkRunOpts) -> anyhow::Result<Command> {
    if !image.is_file() {
        bail!(
            "image {} not found (run janus build --flavor uk)",
            image.display()
        );
    }
    if opts.memory_mib < MIN_MEMORY_MIB {
        bail!(
            "--memory {} MiB is too small for a unikernel node (at least {MIN_MEMORY_MIB})",
            opts.memory_mib
        );
    }
    // KVM with the whole interrupt controller in the kernel: microvm's default splits it (its PIC,
    // IOAPIC and PIT in QEMU), which costs the guest's PIC and PIT port writes a trip to QEMU
    // (boot: the PICs 400 -> 70 us) and every interrupt a vCPU kick through QEMU (KVM_EXIT_INTR).
    const KVM: &str = "kvm,kernel-irqchip=on";
    let accel = match opts.accel {
        Accel::Kvm => {
            if !kvm_available() {
                bail!("--accel kvm: /dev/kvm cannot be opened");
            }
            KVM
        }
        Accel::Tcg => "tcg",
        Accel::Auto => {
            if kvm_available() {
                KVM
            } else {
                "tcg"
            }
        }
    };
    let (listen_ip, listen_port) = host_v4("listen address", opts.listen)?;
    let mut netdev = format!(
        "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:{listen_ip}:{listen_port}-:{GUEST_SERVICE_PORT}"
    );
    if let Some(admin) = opts.admin {
        let (ip, port) = host_v4("admin address", admin)?;
        let _ = write!(netdev, ",hostfwd=tcp:{ip}:{port}-:{GUEST_ADMIN_PORT}");
    }
    let (machine, nic) = match opts.machine {
        Machine::Microvm => (
            "microvm,acpi=off,rtc=on,pit=on,pic=on",
            "virtio-net-device,netdev=n0",
        ),
        Machine::Q35 => ("q35", "virtio-net-pci,netdev=n0,disable-legacy=on"),
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    // QEMU has no use for the token `janus run` may have taken from the environment.
    cmd.env_remove(crate::launch::ADMIN_TOKEN_ENV);
    cmd.args(["-M", machine, "-accel", accel, "-smp", "1", "-m"])
        .arg(opts.memory_mib.to_string())
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-netdev",
        ])
        .arg(netdev)
        .args(["-device", nic, "-kernel"])
        .arg(image)
        .arg("-append")
        .arg(kernel_cmdline(opts)?);
    if opts.admin.is_some() {
        let file = write_token_file(opts)?;
        let file = file
            .to_str()
            .with_context(|| format!("{} is not UTF-8 (QEMU option)", opts.secret_dir.display()))?;
        if file.contains(',') {
            bail!(
                "the secret directory path {file} contains a comma, which QEMU options cannot hold"
            );
        }
        cmd.arg("-fw_cfg")
            .arg(format!("name={FW_CFG_TOKEN},file={file}"));
    }
    if let Some(sock) = &opts.gdbstub {
        cmd.arg("-gdb").arg(gdbstub_arg(sock)?);
    }
    Ok(cmd)
}

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with its NUL).
const UNIX_PATH_MAX: usize = 107;

/// QEMU's `-gdb` value for a gdbstub on a Unix socket: listening, never waiting for gdb to boot.
pub fn gdbstub_arg(sock: &Path) -> anyhow::Result<String> {
    let path = sock
        .to_str()
        .with_context(|| format!("gdbstub socket {} is not UTF-8", sock.display()))?;
    if path.len() > UNIX_PATH_MAX {
        bail!(
            "gdbstub socket {path} is {} bytes, longer than a Unix socket path may be \
             ({UNIX_PATH_MAX}): use a shorter run directory (JANUS_RUN_DIR)",
            path.len()
        );
    }
    // QEMU's option syntax doubles a comma inside a value.
    Ok(format!(
        "unix:{},server=on,wait=off",
        path.replace(',', ",,")
    ))
}

/// The gdbstub socket of a QEMU command line made by [`qemu_command`], if it has one.
pub fn gdbstub_of(args: &[String]) -> Option<PathBuf> {
    let v = args.iter().skip_while(|a| *a != "-gdb").nth(1)?;
    let path = v.strip_prefix("unix:")?;
    let end = path
        .match_indices(",server")
        .map(|(i, _)| i)
        .next()
        .unwrap_or(path.len());
    Some(PathBuf::from(path[..end].replace(",,", ",")))
}

/// The image and the accelerator of a QEMU command line made by [`qemu_command`].
pub fn image_and_accel_of(args: &[String]) -> (Option<PathBuf>, Option<String>) {
    let after = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
    (after("-kernel").map(PathBuf::from), after("-accel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> UkRunOpts {
        UkRunOpts {
            listen: "127.0.0.1:8080".parse().expect("addr"),
            admin: Some("127.0.0.1:9090".parse().expect("addr")),
            admin_token: "t0ken".into(),
            node_id: "uk-1".into(),
            upstreams: vec![("backend".into(), "127.0.0.1:7000".parse().expect("addr"))],
            config: vec![("greeting".into(), "Hi there".into())],
            memory_mib: 64,
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            log_level: Some("debug".into()),
            secret_dir: std::env::temp_dir().join(format!("janus-uk-test-{}", std::process::id())),
            gdbstub: None,
        }
    }

    #[test]
    fn gdbstub_socket_round_trips_through_the_command_line() {
        let img = std::env::current_exe().expect("exe");
        let mut o = opts();
        let sock = PathBuf::from("/tmp/run,1/gdb/stable-0.sock");
        o.gdbstub = Some(sock.clone());
        let args: Vec<String> = qemu_command(&img, &o)
            .expect("command")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.iter()
                .any(|a| a == "unix:/tmp/run,,1/gdb/stable-0.sock,server=on,wait=off"),
            "{args:?}"
        );
        assert_eq!(gdbstub_of(&args), Some(sock));
        let (image, accel) = image_and_accel_of(&args);
        assert_eq!(image.as_deref(), Some(img.as_path()));
        assert_eq!(accel.as_deref(), Some("tcg"));
        assert_eq!(gdbstub_of(&args[..args.len() - 2]), None);
        let long = PathBuf::from(format!("/{}/x.sock", "d".repeat(120)));
        let e = gdbstub_arg(&long).expect_err("too long for a Unix socket");
        assert!(e.to_string().contains("JANUS_RUN_DIR"), "{e}");
    }

    #[test]
    fn cmdline_maps_loopback_upstreams_and_escapes() {
        let line = kernel_cmdline(&opts()).expect("cmdline");
        assert!(line.contains("janus.node=uk-1"));
        assert!(!line.contains("janus.token"), "{line}");
        assert!(!line.contains("t0ken"), "{line}");
        assert!(line.contains("janus.upstream.backend=10.0.2.2:7000"));
        assert!(line.contains("janus.config.greeting=Hi%20there"));
        assert!(line.contains("ip=10.0.2.15/24"));
        assert!(line.contains("janus.log=debug"));
        assert!(!line.contains("  "));
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = opts();
        o.node_id = "a b".into();
        assert!(kernel_cmdline(&o).is_err());
        let mut o = opts();
        o.upstreams = vec![("x".into(), "[::1]:80".parse().expect("addr"))];
        assert!(kernel_cmdline(&o).is_err());
        let mut o = opts();
        o.log_level = Some("info,hyper=warn".into());
        let e = kernel_cmdline(&o).expect_err("a tracing filter is not a uk level");
        assert!(e.to_string().contains("info,hyper=warn"), "{e}");
        let mut o = opts();
        o.listen = "[::1]:80".parse().expect("addr");
        let img = std::env::current_exe().expect("exe");
        assert!(qemu_command(&img, &o).is_err());
        assert!(qemu_command(Path::new("/nonexistent.img"), &opts()).is_err());
        let mut o = opts();
        o.memory_mib = MIN_MEMORY_MIB - 1;
        assert!(qemu_command(&img, &o).is_err());
        for bad in ["", "a b", "t\n"] {
            let mut o = opts();
            o.admin_token = bad.into();
            let e = qemu_command(&img, &o).expect_err("a bad token is refused");
            assert!(e.to_string().contains("admin token"), "{e}");
        }
    }

    #[test]
    fn qemu_command_forwards_ports() {
        let img = std::env::current_exe().expect("exe");
        // Its own token directory: it removes it at the end while the other tests run on.
        let mut o = opts();
        o.secret_dir = o.secret_dir.with_extension("ports");
        let cmd = qemu_command(&img, &o).expect("command");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let netdev = args
            .iter()
            .find(|a| a.starts_with("user,"))
            .expect("netdev");
        assert!(netdev.contains("hostfwd=tcp:127.0.0.1:8080-:80"));
        // The token is in a private file QEMU reads, on no argument.
        assert!(args.iter().all(|a| !a.contains("t0ken")), "{args:?}");
        let fw_cfg = args
            .iter()
            .position(|a| a == "-fw_cfg")
            .and_then(|i| args.get(i + 1))
            .expect("-fw_cfg");
        let file = fw_cfg
            .strip_prefix("name=opt/janus/token,file=")
            .expect("fw_cfg file option");
        assert_eq!(std::fs::read_to_string(file).expect("token file"), "t0ken");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&o.secret_dir);
        assert!(netdev.contains("hostfwd=tcp:127.0.0.1:9090-:81"));
        assert!(args.iter().any(|a| a == "tcg"));
        assert!(args.iter().any(|a| a.starts_with("microvm")));
    }

    #[test]
    fn rust_paths() {
        assert!(is_rust_path("janus_samples_hello"));
        assert!(is_rust_path("a::B"));
        assert!(!is_rust_path("a b"));
        assert!(!is_rust_path(""));
        assert!(!is_rust_path("x;y"));
    }
}

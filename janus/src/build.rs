//! `janus build`: one service crate, two flavours.
//!
//! The service crate never names its backend. For each flavour the tool generates a tiny wrapper crate
//! (its own `[workspace]`, under `target/janus/gen/`) whose only code names the service type and hands it
//! to the backend, builds it with the workspace's `Cargo.lock` to pin versions, and writes the artifact
//! plus `<package>.requirements.json` (the manifest the platform reads) to `target/janus/out/<package>/<flavor>/`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, bail};

use crate::flavor;
use crate::service::ServiceCrate;

/// Which build of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// The instrumented Linux process (debug/beta pool).
    Unix,
    /// The unikernel image (stable pool).
    Uk,
}

impl Flavor {
    /// `unix` or `uk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Unix => "unix",
            Flavor::Uk => "uk",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unix" => Ok(Flavor::Unix),
            "uk" => Ok(Flavor::Uk),
            other => Err(format!(
                "unknown flavor '{other}' (expected 'unix' or 'uk')"
            )),
        }
    }
}

/// A built service.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The flavour.
    pub flavor: Flavor,
    /// The service crate.
    pub service: ServiceCrate,
    /// The binary (unix) or the stripped image (uk).
    pub path: PathBuf,
    /// The unstripped ELF kept for gdb (uk only).
    pub debug_elf: Option<PathBuf>,
    /// The requirements manifest written next to the artifact.
    pub requirements: PathBuf,
    /// The service manifest as JSON.
    pub manifest: serde_json::Value,
}

/// Where the tool keeps generated crates, target dirs and outputs.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The Janus source tree.
    pub home: PathBuf,
}

impl Layout {
    /// The layout under [`crate::janus_home`].
    pub fn new() -> Layout {
        Layout {
            home: crate::janus_home(),
        }
    }
    /// Generated wrapper crate for `package` and `what` (`unix`, `uk`, `manifest`).
    pub fn gen_dir(&self, package: &str, what: &str) -> PathBuf {
        self.home
            .join("target/janus/gen")
            .join(format!("{package}-{what}"))
    }
    /// Cargo target dir for wrappers of one kind.
    pub fn target_dir(&self, what: &str) -> PathBuf {
        self.home.join("target").join(format!("janus-{what}"))
    }
    /// Output directory of one flavour of one service.
    pub fn out_dir(&self, package: &str, flavor: Flavor) -> PathBuf {
        self.home
            .join("target/janus/out")
            .join(package)
            .join(flavor.as_str())
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::new()
    }
}

/// The cargo profile of a unix build. The uk build is always `release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnixProfile {
    /// Optimised, with `overflow-checks` and `debug-assertions` on in the local crates (the service,
    /// its path dependencies, backend-unix, runtime-abi, janus-http1; registry dependencies keep
    /// release semantics): an arithmetic overflow or a failed `debug_assert!` that the unikernel
    /// silently lives with (wrapping, a broken invariant) is a panic with a backtrace on the debug
    /// build.
    #[default]
    Checked,
    /// Plain release semantics, like the unikernel (overflow wraps, debug assertions compiled out).
    Release,
}

impl UnixProfile {
    /// The cargo profile name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnixProfile::Checked => "checked",
            UnixProfile::Release => "release",
        }
    }
}

/// Builds `service_dir` as `flavor` (a unix build with the default [`UnixProfile::Checked`]).
pub fn build(service_dir: &Path, flavor: Flavor) -> anyhow::Result<Artifact> {
    build_with(service_dir, flavor, UnixProfile::default())
}

/// Builds `service_dir` as `flavor`, a unix build with `profile`.
pub fn build_with(
    service_dir: &Path,
    flavor: Flavor,
    profile: UnixProfile,
) -> anyhow::Result<Artifact> {
    let layout = Layout::new();
    let service = ServiceCrate::load(service_dir)?;
    let manifest = read_manifest(&layout, &service)?;
    let out_dir = layout.out_dir(&service.package, flavor);
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let (path, debug_elf) = match flavor {
        Flavor::Unix => (
            flavor::unix::build(&layout, &service, &out_dir, profile)?,
            None,
        ),
        Flavor::Uk => {
            let a = flavor::uk::build(
                &service.dir,
                &service.package,
                &service.lib_name,
                &service.service_type,
                &layout.home,
                &out_dir,
            )?;
            (a.image, Some(a.debug_elf))
        }
    };
    let size = std::fs::metadata(&path)
        .with_context(|| format!("artifact {} missing after build", path.display()))?
        .len();
    let requirements = out_dir.join(format!("{}.requirements.json", service.package));
    let doc = serde_json::json!({
        "flavor": flavor.as_str(),
        "profile": match flavor {
            Flavor::Unix => profile.as_str(),
            Flavor::Uk => "release",
        },
        "artifact": path,
        "debug_elf": debug_elf,
        "size_bytes": size,
        "service": manifest,
    });
    std::fs::write(&requirements, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", requirements.display()))?;
    Ok(Artifact {
        flavor,
        service,
        path,
        debug_elf,
        requirements,
        manifest,
    })
}

/// Builds and runs a host program that prints the service's manifest.
fn read_manifest(layout: &Layout, service: &ServiceCrate) -> anyhow::Result<serde_json::Value> {
    let dir = layout.gen_dir(&service.package, "manifest");
    let abi = layout.home.join("runtime-abi");
    let cargo_toml = format!(
        r#"[package]
name = "{pkg}-manifest"
version = "0.0.0"
edition = "2024"
publish = false

[[bin]]
name = "print-manifest"
path = "main.rs"

[dependencies]
runtime-abi = {{ path = {abi:?} }}
{pkg} = {{ path = {svc:?} }}

[workspace]
"#,
        pkg = service.package,
        abi = abi,
        svc = service.dir,
    );
    let main = format!(
        "fn main() {{\n    println!(\"{{}}\", <{} as runtime_abi::Service>::MANIFEST.to_json());\n}}\n",
        service.type_path()
    );
    write_wrapper(layout, &dir, &cargo_toml, &[("main.rs", &main)])?;
    let target = layout.target_dir("host");
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    run_cargo(cmd, "manifest printer")?;
    let bin = target.join("debug/print-manifest");
    let out = Command::new(&bin)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "the manifest printer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("the service manifest is not valid JSON")
}

/// Writes a generated crate, touching files only when their content changed (so cargo's
/// fingerprints stay valid), and seeds its lock file from the Janus workspace.
pub fn write_wrapper(
    layout: &Layout,
    dir: &Path,
    cargo_toml: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut all = vec![("Cargo.toml", cargo_toml)];
    all.extend_from_slice(files);
    for (name, content) in all {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_if_changed(&path, content.as_bytes())?;
    }
    let lock = dir.join("Cargo.lock");
    let ws_lock = layout.home.join("Cargo.lock");
    if !lock.exists() && ws_lock.exists() {
        std::fs::copy(&ws_lock, &lock)
            .with_context(|| format!("cannot copy {}", ws_lock.display()))?;
    }
    Ok(())
}

/// Writes `contents` unless the file already holds exactly that (cargo's fingerprints use mtimes).
pub(crate) fn write_if_changed(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// A `cargo` command with the outer cargo's build environment removed, so a `janus build` started
/// from inside `cargo test` or a build script behaves like one started from a shell.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

static OUTPUT_LOG: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Sends the output of every later cargo run to this file (appended) instead of the terminal, so
/// progress bars stay readable; `None` restores the terminal.
pub fn set_output_log(path: Option<PathBuf>) {
    *OUTPUT_LOG.lock().unwrap_or_else(|e| e.into_inner()) = path;
}

/// Where cargo's output goes: the log set by [`set_output_log`], else the terminal.
pub fn output_stdio() -> anyhow::Result<(std::process::Stdio, std::process::Stdio)> {
    let guard = OUTPUT_LOG.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            Ok((f.try_clone()?.into(), f.into()))
        }
        None => Ok((
            std::process::Stdio::inherit(),
            std::process::Stdio::inherit(),
        )),
    }
}

/// Runs cargo; on failure the error names what was being built.
pub fn run_cargo(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let (out, err) = output_stdio()?;
    cmd.stdout(out).stderr(err);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start cargo to build the {what}"))?;
    if !status.success() {
        bail!("cargo failed to build the {what} ({status})");
    }
    Ok(())
}

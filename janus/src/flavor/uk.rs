//! The unikernel flavour (being written by the backend-uk work; this file is replaced by it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}

/// Builds the image.
pub fn build(
    _service_dir: &Path,
    _package: &str,
    _lib_name: &str,
    _service_type: &str,
    _workspace_root: &Path,
    _out_dir: &Path,
) -> anyhow::Result<UkArtifact> {
    anyhow::bail!("the uk flavour is not available in this build yet")
}

/// The QEMU command line for an image.
pub fn qemu_command(_image: &Path, _opts: &UkRunOpts) -> anyhow::Result<std::process::Command> {
    anyhow::bail!("the uk flavour is not available in this build yet")
}

//! `janus deploy --emit kubernetes|nomad DIR`: the files that run a cluster file's pools on an
//! orchestrator, written offline (nothing is built, pushed or applied).
//!
//! - [`kubernetes`]: debug nodes as Deployments, stable (unikernel) nodes as KubeVirt
//!   VirtualMachines booting the image from a container disk, Services per node and per pool, the
//!   router as a Deployment with its config in a ConfigMap, the Containerfiles of the three images.
//! - [`nomad`]: one Nomad job (JSON): the qemu driver for unikernel nodes, the exec driver for
//!   process nodes and the router, Nomad-provider services tagged by pool, the router's node list
//!   rendered from those services by a template.
//!
//! Admin tokens are never written into these files: they are references to a Kubernetes Secret or a
//! Nomad Variable the operator creates (docs/DEPLOY.md).

pub mod kubernetes;
pub mod nomad;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cluster::ClusterFile;
use crate::service::ServiceCrate;

/// What to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Kubernetes manifests (KubeVirt for the unikernel nodes).
    Kubernetes,
    /// A Nomad job (JSON job specification).
    Nomad,
}

/// Where the emitted files find the built artifacts.
#[derive(Debug, Clone)]
pub struct DeployOpts {
    /// Container image repository prefix (Kubernetes): images are `<repo>/<package>-uk:<tag>`,
    /// `<repo>/<package>-unix:<tag>` and `<repo>/lb-router:<tag>`.
    pub image_repo: String,
    /// Image tag (Kubernetes) and artifact version directory (Nomad).
    pub tag: String,
    /// Base URL the Nomad clients download the artifacts from (go-getter):
    /// `<artifacts>/<tag>/<package>.img`, `.../<package>-unix`, `.../lb-router`.
    pub artifacts: String,
    /// The machine the Nomad qemu driver gives unikernel nodes.
    pub nomad_machine: NomadMachine,
}

/// The machine of a unikernel node under Nomad's qemu driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NomadMachine {
    /// `pc`, the only machine before Nomad 2.0 (its `-machine type=pc` is fixed): PCI virtio.
    Pc,
    /// `microvm` through the `machine_type` option of Nomad 2.0 and later: virtio-mmio, no PCI
    /// bus, no firmware (an older Nomad refuses the job: unknown option).
    Microvm,
}

impl Default for DeployOpts {
    fn default() -> Self {
        DeployOpts {
            image_repo: "registry.example.com/janus".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            artifacts: "https://artifacts.example.com/janus".into(),
            nomad_machine: NomadMachine::Pc,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct Emitted {
    /// Every file, in the order written.
    pub files: Vec<PathBuf>,
    /// What the operator must know (settings of the cluster file that have no equivalent there).
    pub notes: Vec<String>,
}

/// The names and numbers both emitters share, derived from a cluster file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The cluster file.
    pub cluster: ClusterFile,
    /// The service's Cargo package (artifact names).
    pub package: String,
    /// `janus-<cluster name>`: prefix of every object / the Nomad job id.
    pub prefix: String,
    /// Whether the stable pool is unikernel nodes (else process nodes).
    pub stable_uk: bool,
}

/// Longest Kubernetes Service name (an RFC 1035 label).
const DNS_LABEL_MAX: usize = 63;

impl Plan {
    pub fn new(cluster: &ClusterFile) -> anyhow::Result<Plan> {
        let service = ServiceCrate::load(&cluster.service)?;
        let name = &cluster.name;
        let label_ok = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.ends_with('-');
        if !label_ok {
            bail!(
                "name = {name:?}: Kubernetes and Nomad names derived from it need lowercase letters, \
                 digits and '-', starting with a letter (rename the cluster in the cluster file)"
            );
        }
        let prefix = format!("janus-{name}");
        let longest = [
            format!("{prefix}-stable-{}", cluster.stable.count.saturating_sub(1)),
            format!("{prefix}-debug-{}", cluster.debug.count.saturating_sub(1)),
        ]
        .into_iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(0);
        if longest > DNS_LABEL_MAX {
            bail!(
                "name = {name:?} is too long: object names such as {prefix}-stable-N must fit in \
                 {DNS_LABEL_MAX} characters"
            );
        }
        Ok(Plan {
            package: service.package,
            prefix,
            stable_uk: cluster.stable.flavor == crate::Flavor::Uk,
            cluster: cluster.clone(),
        })
    }

    /// Ids of the stable nodes (`stable-0` ...), as `janus up` names them.
    pub fn stable_ids(&self) -> Vec<String> {
        (0..self.cluster.stable.count)
            .map(|i| format!("stable-{i}"))
            .collect()
    }

    /// Ids of the debug nodes.
    pub fn debug_ids(&self) -> Vec<String> {
        (0..self.cluster.debug.count)
            .map(|i| format!("debug-{i}"))
            .collect()
    }

    /// The settings that do not carry over, as notes for the operator.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let c = &self.cluster;
        if c.debug.spare > 0 {
            notes.push(format!(
                "debug.spare = {}: spare nodes are for `janus faults repro` on a local cluster; none \
                 are emitted",
                c.debug.spare
            ));
        }
        if c.stable.gdbstub != crate::cluster::GdbStubSpec::All(false) {
            notes.push(
                "stable.gdbstub: QEMU's gdbstub is a local debugging aid; it is not emitted".into(),
            );
        }
        notes
    }
}

/// Writes the files for `target` into `dir` (created when missing).
pub fn emit(
    target: Target,
    cluster: &ClusterFile,
    dir: &Path,
    opts: &DeployOpts,
) -> anyhow::Result<Emitted> {
    let plan = Plan::new(cluster)?;
    prepare_dir(dir)?;
    let mut out = Emitted {
        notes: plan.notes(),
        ..Emitted::default()
    };
    let defaults = DeployOpts::default();
    match target {
        Target::Kubernetes => {
            if opts.image_repo == defaults.image_repo {
                out.notes.push(format!(
                    "images are named {}/…: pass --image-repo with your registry",
                    defaults.image_repo
                ));
            }
            kubernetes::emit(&plan, dir, opts, &mut out)?
        }
        Target::Nomad => {
            if opts.artifacts == defaults.artifacts {
                out.notes.push(format!(
                    "artifacts are fetched from {}/…: pass --artifacts with where you publish them",
                    defaults.artifacts
                ));
            }
            nomad::emit(&plan, dir, opts, &mut out)?
        }
    }
    Ok(out)
}

/// Creates `dir` and checks that files can be written into it.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "output directory {} exists and is not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let probe = dir.join(format!(".janus-deploy-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes one file under `dir` (creating its parent), records it.
fn write(dir: &Path, rel: &str, contents: &str, out: &mut Emitted) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    out.files.push(path);
    Ok(())
}

/// Guest port of the service listener and of the admin listener of a unikernel node.
pub(crate) use crate::flavor::uk::{GUEST_ADMIN_PORT, GUEST_SERVICE_PORT};

/// The kernel command line of a unikernel node outside `janus up`: DHCP addressing (the platform's
/// network hands out the address), the admin listener on [`GUEST_ADMIN_PORT`]. `extra` are appended
/// (the token channel differs per platform).
pub(crate) fn uk_cmdline(node_id: &str, extra: &[String]) -> String {
    let mut words = vec![
        format!("janus.node={node_id}"),
        format!("janus.admin_port={GUEST_ADMIN_PORT}"),
        "ip=dhcp".to_string(),
    ];
    words.extend(extra.iter().cloned());
    words.join(" ")
}

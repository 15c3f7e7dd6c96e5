//! The cluster file: one service, how many stable (unikernel) and debug (process) nodes, router settings
//! and ports. Every key has a default, so `janus up` needs no file at all.
//!
//! ```toml
//! name = "default"            # run directory name: two clusters with different names never collide
//! service = "samples/faulty"  # the service crate (relative to the cluster file, else the Janus tree)
//!
//! [stable]                    # unikernel nodes under QEMU
//! count = 3
//! flavor = "uk"               # "unix" puts process nodes in the stable pool (no QEMU needed)
//! memory_mib = 128
//! machine = "microvm"         # or q35
//! accel = "auto"              # kvm when /dev/kvm opens, else tcg
//! gdbstub = false             # true, or a list of node ids ["stable-0"]: QEMU's gdbstub for `janus debug`
//!
//! [debug]                     # instrumented process nodes
//! count = 1
//! spare = 1                   # extra debug nodes outside the router's pools, used by `janus faults repro`
//! twins = false               # true, or a list ["stable-0"]: a shadow twin (twin-N, a debug node
//!                             # following stable-N's store) that answers stable-N's mirrors at the same seq
//! twin_mirror_wait_ms = 500   # how long a twin lets a mirror wait for the stable answer's seq
//! twin_replay_delay_ms = 5    # how long a twin holds each op log batch back (mirrors find it behind)
//! log_level = "info"
//!
//! [router]
//! listen = "127.0.0.1:8000"   # 0 as the port picks a free one
//! admin = "127.0.0.1:8001"
//! stable_weight = 90
//! debug_weight = 10
//! beta_header = "x-janus-channel"   # `x-janus-channel: beta` always goes to the debug pool
//! request_timeout_ms = 2000
//! [[router.mirror]]
//! prefix = "/stats"
//! fraction = 1.0
//!
//! [restart]
//! backoff_initial_ms = 200
//! backoff_max_ms = 10000
//!
//! [engine]                    # where the stable (unikernel) nodes run
//! kind = "local"              # "local": QEMU children of the supervisor, user networking;
//!                             # "libvirt": persistent libvirt domains on a libvirt network
//! uri = ["qemu:///system"]    # libvirt: connection URIs, nodes spread over them in turn
//! network = ""                # libvirt: network name ("" = janus-<name>, created when missing)
//! subnet = "10.77.0.0/24"     # libvirt: the range of a network Janus creates (gateway .1, nodes from .10)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A whole cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    /// Run directory name.
    pub name: String,
    /// The service crate directory.
    pub service: PathBuf,
    /// Unikernel nodes.
    pub stable: StableSpec,
    /// Process nodes.
    pub debug: DebugSpec,
    /// The router.
    pub router: RouterSpec,
    /// Supervisor restart policy.
    pub restart: RestartSpec,
    /// Where the stable nodes run.
    pub engine: EngineSpec,
}

/// Which engine runs the stable nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// QEMU processes of the supervisor on this host.
    Local,
    /// Persistent libvirt domains.
    Libvirt,
}

/// `[engine]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSpec {
    /// `local` or `libvirt`.
    pub kind: EngineKind,
    /// libvirt connection URIs.
    pub uri: Vec<String>,
    /// libvirt network (empty: `janus-<cluster name>`).
    pub network: String,
    /// IPv4 range of a network Janus creates, `A.B.C.D/N`.
    pub subnet: String,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            kind: EngineKind::Local,
            uri: vec!["qemu:///system".into()],
            network: String::new(),
            subnet: "10.77.0.0/24".into(),
        }
    }
}

impl EngineSpec {
    /// The libvirt network of cluster `name`.
    pub fn network_name(&self, name: &str) -> String {
        if self.network.is_empty() {
            format!("janus-{name}")
        } else {
            self.network.clone()
        }
    }

    /// The subnet as (network address, prefix length).
    pub fn subnet(&self) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
        let bad = || {
            anyhow::anyhow!(
                "engine.subnet = {:?}: expected an IPv4 range A.B.C.D/N with N from 16 to 28",
                self.subnet
            )
        };
        let (ip, len) = self.subnet.split_once('/').ok_or_else(bad)?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        anyhow::ensure!((16..=28).contains(&len), bad());
        let mask = u32::MAX << (32 - u32::from(len));
        Ok((std::net::Ipv4Addr::from(u32::from(ip) & mask), len))
    }
}

/// Unikernel nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StableSpec {
    /// How many.
    pub count: u32,
    /// `uk` (the point of Janus) or `unix` (process nodes in the stable pool, for machines without QEMU).
    pub flavor: crate::Flavor,
    /// Guest memory.
    pub memory_mib: u32,
    /// `microvm` or `q35`.
    pub machine: String,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// Which unikernel nodes run with QEMU's gdbstub (off by default).
    pub gdbstub: GdbStubSpec,
}

/// A set of stable nodes (which get a gdbstub, which get a twin): `true` (every stable node),
/// `false`, or `["stable-0", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GdbStubSpec {
    /// All or none.
    All(bool),
    /// These node ids.
    Nodes(Vec<String>),
}

impl GdbStubSpec {
    /// Whether node `id` runs with a gdbstub.
    pub fn enabled_for(&self, id: &str) -> bool {
        match self {
            GdbStubSpec::All(on) => *on,
            GdbStubSpec::Nodes(ids) => ids.iter().any(|n| n == id),
        }
    }
}

/// Process nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugSpec {
    /// How many in the router's debug pool.
    pub count: u32,
    /// Spare nodes outside the pools, for reproductions.
    pub spare: u32,
    /// Which stable nodes get a shadow twin: `true` (all), `false`, or `["stable-0", ...]`.
    pub twins: GdbStubSpec,
    /// How long a twin lets a mirrored request wait for the stable answer's seq.
    pub twin_mirror_wait_ms: u64,
    /// How long a twin holds each op log batch back before replaying it.
    pub twin_replay_delay_ms: u64,
    /// Log filter.
    pub log_level: String,
}

/// One mirrored route prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// Path prefix.
    pub prefix: String,
    /// Share of stable traffic mirrored, 0.0 to 1.0.
    pub fraction: f64,
}

/// The router.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSpec {
    /// Client listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Weight of the stable pool for ordinary traffic.
    pub stable_weight: u32,
    /// Weight of the debug pool for ordinary traffic.
    pub debug_weight: u32,
    /// Header whose value `beta` selects the beta channel.
    pub beta_header: String,
    /// Upstream request timeout.
    pub request_timeout_ms: u64,
    /// Shadow mirroring.
    pub mirror: Vec<MirrorSpec>,
}

/// Restart policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartSpec {
    /// First backoff.
    pub backoff_initial_ms: u64,
    /// Backoff cap.
    pub backoff_max_ms: u64,
}

impl Default for ClusterFile {
    fn default() -> Self {
        ClusterFile {
            name: "default".into(),
            service: PathBuf::from("samples/faulty"),
            stable: StableSpec::default(),
            debug: DebugSpec::default(),
            router: RouterSpec::default(),
            restart: RestartSpec::default(),
            engine: EngineSpec::default(),
        }
    }
}

impl Default for StableSpec {
    fn default() -> Self {
        StableSpec {
            count: 3,
            flavor: crate::Flavor::Uk,
            memory_mib: 128,
            machine: "microvm".into(),
            accel: "auto".into(),
            gdbstub: GdbStubSpec::All(false),
        }
    }
}

impl Default for DebugSpec {
    fn default() -> Self {
        DebugSpec {
            count: 1,
            spare: 1,
            twins: GdbStubSpec::All(false),
            twin_mirror_wait_ms: 500,
            twin_replay_delay_ms: 5,
            log_level: "info".into(),
        }
    }
}

impl Default for RouterSpec {
    fn default() -> Self {
        RouterSpec {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8001)),
            stable_weight: 90,
            debug_weight: 10,
            beta_header: "x-janus-channel".into(),
            request_timeout_ms: 2000,
            mirror: vec![MirrorSpec {
                prefix: "/stats".into(),
                fraction: 1.0,
            }],
        }
    }
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
        }
    }
}

impl ClusterFile {
    /// Defaults <- the file (when given) <- `JANUS_CLUSTER_*` env (`__` separates nesting). A relative
    /// service path is resolved against the file's directory, else the Janus tree.
    pub fn load(path: Option<&Path>) -> anyhow::Result<ClusterFile> {
        let mut fig = Figment::from(Serialized::defaults(ClusterFile::default()));
        if let Some(p) = path {
            anyhow::ensure!(p.exists(), "cluster file {} not found", p.display());
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(Env::prefixed("JANUS_CLUSTER_").split("__"));
        let mut c: ClusterFile = fig.extract().map_err(|e| {
            anyhow::anyhow!(
                "invalid cluster config{}: {e}",
                path.map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            )
        })?;
        c.validate()?;
        if c.service.is_relative() {
            let from_file = path
                .and_then(Path::parent)
                .map(|d| d.join(&c.service))
                .filter(|p| p.exists());
            c.service = from_file.unwrap_or_else(|| crate::janus_home().join(&c.service));
        }
        Ok(c)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        anyhow::ensure!(
            name_ok,
            "name = {:?}: use letters, digits, - and _",
            self.name
        );
        anyhow::ensure!(
            self.stable.count + self.debug.count > 0,
            "stable.count + debug.count must be at least 1"
        );
        anyhow::ensure!(
            matches!(self.stable.machine.as_str(), "microvm" | "q35"),
            "stable.machine = {:?}: expected microvm or q35",
            self.stable.machine
        );
        anyhow::ensure!(
            matches!(self.stable.accel.as_str(), "auto" | "kvm" | "tcg"),
            "stable.accel = {:?}: expected auto, kvm or tcg",
            self.stable.accel
        );
        anyhow::ensure!(
            self.stable.memory_mib >= crate::flavor::uk::MIN_MEMORY_MIB,
            "stable.memory_mib = {} is below {} (the least a unikernel boots with)",
            self.stable.memory_mib,
            crate::flavor::uk::MIN_MEMORY_MIB
        );
        for (key, set) in [
            ("stable.gdbstub", &self.stable.gdbstub),
            ("debug.twins", &self.debug.twins),
        ] {
            let GdbStubSpec::Nodes(ids) = set else {
                continue;
            };
            for id in ids {
                let known = id
                    .strip_prefix("stable-")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n < self.stable.count);
                anyhow::ensure!(
                    known,
                    "{key} names {id:?}, which is not a stable node (stable-0 .. stable-{})",
                    self.stable.count.saturating_sub(1)
                );
            }
        }
        anyhow::ensure!(
            self.stable.gdbstub == GdbStubSpec::All(false)
                || self.stable.flavor == crate::Flavor::Uk,
            "stable.gdbstub: only unikernel nodes (stable.flavor = \"uk\") run under QEMU's gdbstub; \
             `janus debug` attaches to a process node by its pid without it"
        );
        if self.engine.kind == EngineKind::Libvirt {
            anyhow::ensure!(
                !self.engine.uri.is_empty(),
                "engine.uri: list at least one libvirt connection URI (e.g. \"qemu:///system\")"
            );
            anyhow::ensure!(
                self.stable.flavor == crate::Flavor::Uk,
                "engine.kind = \"libvirt\" runs unikernel stable nodes (stable.flavor = \"uk\"); \
                 process nodes stay on the router's host"
            );
            anyhow::ensure!(
                self.stable.machine == "microvm",
                "engine.kind = \"libvirt\": stable.machine must be \"microvm\" (the domain is a microvm)"
            );
            anyhow::ensure!(
                self.stable.gdbstub == GdbStubSpec::All(false),
                "stable.gdbstub: not available on the libvirt engine (attach gdb with \
                 `virsh qemu-monitor-command DOMAIN --hmp gdbserver` instead)"
            );
            let network = self.engine.network_name(&self.name);
            anyhow::ensure!(
                !network.is_empty()
                    && network
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "engine.network = {network:?}: use letters, digits, - and _"
            );
            self.engine.subnet()?;
        }
        for m in &self.router.mirror {
            anyhow::ensure!(
                (0.0..=1.0).contains(&m.fraction),
                "router.mirror fraction {} for {:?} is outside 0.0..=1.0",
                m.fraction,
                m.prefix
            );
            anyhow::ensure!(
                m.prefix.starts_with('/'),
                "router.mirror prefix {:?} must start with /",
                m.prefix
            );
        }
        Ok(())
    }
}

/// The run directory of a cluster: `$JANUS_RUN_DIR/<name>`, else `<Janus tree>/target/janus/run/<name>`.
pub fn run_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("JANUS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::janus_home().join("target/janus/run"));
    base.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_and_bad_keys_are_named() {
        let c = ClusterFile::load(None).expect("defaults");
        assert_eq!(c.stable.count, 3);
        assert!(c.service.ends_with("samples/faulty"));
        let dir = std::env::temp_dir().join(format!("janus-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("c.toml");
        std::fs::write(&f, "[stable]\ncuont = 2\n").expect("write");
        let err = ClusterFile::load(Some(&f)).expect_err("typo refused");
        assert!(format!("{err:#}").contains("cuont"), "{err:#}");
        std::fs::write(&f, "[stable]\nmachine = \"pc\"\n").expect("write");
        let err = ClusterFile::load(Some(&f)).expect_err("bad machine");
        assert!(format!("{err:#}").contains("stable.machine"), "{err:#}");
        std::fs::write(&f, "name = \"x\"\n[debug]\ncount = 2\n").expect("write");
        let c = ClusterFile::load(Some(&f)).expect("valid");
        assert_eq!(
            (c.name.as_str(), c.debug.count, c.stable.count),
            ("x", 2, 3)
        );
        std::fs::write(&f, "[stable]\ncount = 2\ngdbstub = [\"stable-1\"]\n").expect("write");
        let c = ClusterFile::load(Some(&f)).expect("valid");
        assert!(c.stable.gdbstub.enabled_for("stable-1"));
        assert!(!c.stable.gdbstub.enabled_for("stable-0"));
        std::fs::write(&f, "[stable]\ncount = 2\ngdbstub = [\"stable-2\"]\n").expect("write");
        let err = ClusterFile::load(Some(&f)).expect_err("no such node");
        assert!(format!("{err:#}").contains("stable-2"), "{err:#}");
        std::fs::write(&f, "[stable]\ngdbstub = true\n").expect("write");
        let c = ClusterFile::load(Some(&f)).expect("valid");
        assert!(c.stable.gdbstub.enabled_for("stable-0"));
        std::fs::write(&f, "name = \"c1\"\n[engine]\nkind = \"libvirt\"\n").expect("write");
        let c = ClusterFile::load(Some(&f)).expect("valid");
        assert_eq!(c.engine.network_name(&c.name), "janus-c1");
        assert_eq!(
            c.engine.subnet().expect("default subnet"),
            (std::net::Ipv4Addr::new(10, 77, 0, 0), 24)
        );
        for (bad, key) in [
            ("[engine]\nkind = \"kvm\"\n", "kind"),
            ("[engine]\nkind = \"libvirt\"\nuri = []\n", "engine.uri"),
            (
                "[engine]\nkind = \"libvirt\"\nsubnet = \"10.0.0.0/30\"\n",
                "engine.subnet",
            ),
            (
                "[engine]\nkind = \"libvirt\"\n[stable]\nflavor = \"unix\"\n",
                "stable.flavor",
            ),
            (
                "[engine]\nkind = \"libvirt\"\n[stable]\nmachine = \"q35\"\n",
                "stable.machine",
            ),
            (
                "[engine]\nkind = \"libvirt\"\nnetwork = \"a b\"\n",
                "engine.network",
            ),
        ] {
            std::fs::write(&f, bad).expect("write");
            let err = ClusterFile::load(Some(&f)).expect_err(bad);
            assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

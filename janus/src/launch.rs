//! Node options shared by both flavours, and the command that starts one node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::build::{Artifact, Flavor};
use crate::flavor::uk::{Accel, Machine, UkRunOpts};

/// Options of one node; `janus run`, `janus up` and the tests share them.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeOpts {
    /// Address the service listens on (unix) or that QEMU forwards to the guest (uk).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin listener address (loopback by default).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Bearer token for the admin listener (generated when absent). A flag is visible to every
    /// user in `ps`: prefer the JANUS_ADMIN_TOKEN environment variable. janus hands it to the node
    /// through the environment (unix) or a 0600 file QEMU passes as fw_cfg (uk), never on the
    /// node's command line.
    #[arg(long, env = "JANUS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Node id reported in `x-janus-node`.
    #[arg(long)]
    pub node_id: Option<String>,
    /// `NAME=ADDR:PORT`: map a declared upstream to an address (repeatable).
    #[arg(long = "upstream", value_name = "NAME=ADDR:PORT", value_parser = parse_upstream)]
    pub upstreams: Vec<(String, SocketAddr)>,
    /// `KEY=VALUE`: set a declared service config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub config: Vec<(String, String)>,
    /// Log format of the unix build: human or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log filter: EnvFilter syntax for the unix build; one level (error, warn, info, debug,
    /// trace) for the uk build's console.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Guest memory in MiB (uk).
    #[arg(long = "memory", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory_mib: u32,
    /// QEMU machine (uk): microvm or q35.
    #[arg(long, default_value = "microvm", value_parser = parse_machine)]
    pub machine: MachineArg,
    /// Accelerator (uk): kvm, tcg or auto (kvm when /dev/kvm opens).
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    pub accel: AccelArg,
    /// Directory for a uk node's token file (0700; default: see [`crate::secret::default_dir`]).
    #[arg(skip)]
    pub secret_dir: Option<PathBuf>,
    /// (uk) Start QEMU's gdbstub on this Unix socket, for `janus debug --socket PATH`.
    #[arg(long, value_name = "SOCKET")]
    pub gdbstub: Option<std::path::PathBuf>,
    /// (unix) Run as the shadow twin of the node whose admin listener is ADDR: follow its store
    /// through its op log. Its admin token is read from JANUS_FOLLOW_TOKEN (default: this node's).
    #[arg(long, value_name = "ADDR:PORT")]
    pub follow: Option<SocketAddr>,
    /// The followed node's admin token (handed over in the environment, never on a command line).
    #[arg(long, env = "JANUS_FOLLOW_TOKEN", hide_env_values = true)]
    pub follow_token: Option<String>,
}

/// The environment variable a twin takes its leader's admin token from.
pub const FOLLOW_TOKEN_ENV: &str = "JANUS_FOLLOW_TOKEN";

/// The environment variable a unix node (backend-unix) and `janus run` take the admin token from.
pub const ADMIN_TOKEN_ENV: &str = "JANUS_ADMIN_TOKEN";

/// Guest memory when nothing says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            listen: None,
            admin: None,
            admin_token: None,
            node_id: None,
            upstreams: Vec::new(),
            config: Vec::new(),
            log_format: None,
            log_level: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            machine: MachineArg::default(),
            accel: AccelArg::default(),
            secret_dir: None,
            gdbstub: None,
            follow: None,
            follow_token: None,
        }
    }
}

/// Clap-parsable wrapper of [`Machine`].
#[derive(Debug, Clone, Copy)]
pub struct MachineArg(pub Machine);
impl Default for MachineArg {
    fn default() -> Self {
        MachineArg(Machine::Microvm)
    }
}

/// Clap-parsable wrapper of [`Accel`].
#[derive(Debug, Clone, Copy)]
pub struct AccelArg(pub Accel);
impl Default for AccelArg {
    fn default() -> Self {
        AccelArg(Accel::Auto)
    }
}

fn parse_machine(s: &str) -> Result<MachineArg, String> {
    match s {
        "microvm" => Ok(MachineArg(Machine::Microvm)),
        "q35" => Ok(MachineArg(Machine::Q35)),
        _ => Err(format!("unknown machine '{s}' (expected microvm or q35)")),
    }
}

fn parse_accel(s: &str) -> Result<AccelArg, String> {
    match s {
        "auto" => Ok(AccelArg(Accel::Auto)),
        "kvm" => Ok(AccelArg(Accel::Kvm)),
        "tcg" => Ok(AccelArg(Accel::Tcg)),
        _ => Err(format!(
            "unknown accelerator '{s}' (expected kvm, tcg or auto)"
        )),
    }
}

/// Parses `NAME=ADDR:PORT`.
pub fn parse_upstream(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=ADDR:PORT"))?;
    if name.is_empty() {
        return Err(format!("'{s}' has an empty upstream name"));
    }
    let addr = addr
        .parse()
        .map_err(|_| format!("'{addr}' in '{s}' is not an IP address with a port"))?;
    Ok((name.to_string(), addr))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

impl NodeOpts {
    /// The command that starts a unix node of `program`: [`Self::unix_args`], and the admin token
    /// in the node's environment (`JANUS_ADMIN_TOKEN`), never on its command line.
    pub fn unix_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.unix_args());
        match &self.admin_token {
            Some(t) => cmd.env(ADMIN_TOKEN_ENV, t),
            None => cmd.env_remove(ADMIN_TOKEN_ENV),
        };
        match &self.follow_token {
            Some(t) => cmd.env(FOLLOW_TOKEN_ENV, t),
            None => cmd.env_remove(FOLLOW_TOKEN_ENV),
        };
        cmd
    }

    /// The command line flags of a unix node (without the admin token: see [`Self::unix_command`]).
    pub fn unix_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        if let Some(l) = self.listen {
            push("--listen", l.to_string());
        }
        if let Some(l) = self.admin {
            push("--admin", l.to_string());
        }
        if let Some(n) = &self.node_id {
            push("--node-id", n.clone());
        }
        for (n, addr) in &self.upstreams {
            push("--upstream", format!("{n}={addr}"));
        }
        for (k, v) in &self.config {
            push("--set", format!("{k}={v}"));
        }
        if let Some(f) = &self.log_format {
            push("--log-format", f.clone());
        }
        if let Some(l) = &self.log_level {
            push("--log-level", l.clone());
        }
        if let Some(f) = self.follow {
            push("--follow", f.to_string());
        }
        a
    }

    /// The run options of a uk node (a missing admin token is generated and printed).
    pub fn uk_run_opts(&self) -> anyhow::Result<UkRunOpts> {
        let admin_token = match &self.admin_token {
            Some(t) => t.clone(),
            None => {
                let t = crate::secret::random_token()?;
                eprintln!("janus: generated admin token {t}");
                t
            }
        };
        Ok(UkRunOpts {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin: self.admin,
            admin_token,
            node_id: self.node_id.clone().unwrap_or_else(|| "uk-0".to_string()),
            upstreams: self.upstreams.clone(),
            config: self.config.clone(),
            memory_mib: self.memory_mib,
            machine: self.machine.0,
            accel: self.accel.0,
            log_level: self.log_level.clone(),
            secret_dir: match &self.secret_dir {
                Some(d) => d.clone(),
                None => crate::secret::default_dir()?,
            },
            gdbstub: self.gdbstub.clone(),
        })
    }
}

/// The command that runs one node of a built artifact.
pub fn command(artifact: &Artifact, opts: &NodeOpts) -> anyhow::Result<Command> {
    match artifact.flavor {
        Flavor::Unix => {
            if let Some(sock) = &opts.gdbstub {
                anyhow::bail!(
                    "--gdbstub {}: only a uk node runs under QEMU's gdbstub; attach gdb to a \
                     unix node by its pid (`janus debug NODE` does)",
                    sock.display()
                );
            }
            Ok(opts.unix_command(&artifact.path))
        }
        Flavor::Uk => {
            if let Some(f) = &opts.log_format {
                anyhow::bail!(
                    "--log-format {f}: only the unix build has log formats; a uk node writes \
                     plain lines to its console"
                );
            }
            crate::flavor::uk::qemu_command(&artifact.path, &opts.uk_run_opts()?)
                .context("cannot prepare the QEMU command")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flag_parsing_names_the_problem() {
        assert_eq!(
            parse_upstream("backend=127.0.0.1:9000"),
            Ok(("backend".into(), "127.0.0.1:9000".parse().expect("addr")))
        );
        assert!(
            parse_upstream("backend")
                .unwrap_err()
                .contains("NAME=ADDR:PORT")
        );
        assert!(parse_upstream("=1.2.3.4:5").unwrap_err().contains("empty"));
        assert!(
            parse_upstream("b=localhost")
                .unwrap_err()
                .contains("not an IP")
        );
    }
}

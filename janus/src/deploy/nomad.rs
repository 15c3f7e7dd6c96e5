//! A Nomad job (the JSON job specification `nomad job run -json FILE` takes), `janus-<c>.nomad.json`:
//!
//! - group `stable`: unikernel nodes under the **qemu** driver (process nodes under **exec** when
//!   `stable.flavor = "unix"`). The driver always runs `qemu-system-x86_64 -machine
//!   type=<pc|machine_type>,accel=… -m <MemoryMB>M -drive file=<image_path>,if=… -nographic` and
//!   refuses less than 128 MB. Before Nomad 2.0 the machine is always `pc`: the image boots there
//!   through `-kernel` (SeaBIOS loads the PVH entry) with a modern virtio-net-pci NIC; from 2.0
//!   `machine_type` can name `microvm` (`--nomad-machine microvm`: virtio-mmio NIC). The image is
//!   also the (ignored) `image_path` drive, attached with `drive_interface = "none"`. Everything else
//!   is in `args`: user networking forwarding the two dynamic ports, the kernel command line,
//!   isa-debug-exit (a panic exits QEMU with status 33, so Nomad restarts the task), and the admin
//!   token as the fw_cfg file `opt/janus/token`, rendered from a Nomad Variable into the task's
//!   `secrets/` directory.
//! - group `debug`: process nodes under **exec**, the token in their environment from the same
//!   Variable.
//! - group `router`: lb-router under **exec**; its `router.toml` is a template whose `[[nodes]]` are
//!   the Nomad-provider services `janus-<c>-stable` and `janus-<c>-debug` (tags `pool=…`, `node=…`,
//!   `admin=…`), re-rendered on every change with SIGHUP, which makes the router reload.
//!
//! Durations are nanoseconds, as in the Nomad API.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

use super::{
    DeployOpts, Emitted, GUEST_ADMIN_PORT, GUEST_SERVICE_PORT, NomadMachine, Plan, uk_cmdline,
    write,
};

/// The least memory the qemu driver accepts, in MB.
pub const QEMU_DRIVER_MIN_MEMORY_MB: u32 = 128;

const SECOND_NS: u64 = 1_000_000_000;

/// The Nomad Variable holding `router_token` and `node_token` (readable by the job's tasks through
/// their workload identity).
pub fn variable_path(plan: &Plan) -> String {
    format!("nomad/jobs/{}", plan.prefix)
}

/// The Nomad service name of a pool.
pub fn pool_service(plan: &Plan, pool: &str) -> String {
    format!("{}-{pool}", plan.prefix)
}

fn artifact(opts: &DeployOpts, file: &str) -> Value {
    json!({
        "GetterSource": format!("{}/{}/{file}", opts.artifacts.trim_end_matches('/'), opts.tag),
        "GetterMode": "file",
        "RelativeDest": format!("local/{file}"),
    })
}

fn var_template(plan: &Plan, key: &str) -> String {
    format!(
        "{{{{ with nomadVar \"{}\" }}}}{{{{ .{key} }}}}{{{{ end }}}}",
        variable_path(plan)
    )
}

/// A template rendering secret lines into the task's `secrets/` directory.
fn secret_template(body: String, dest: &str, env: bool) -> Value {
    json!({
        "EmbeddedTmpl": body,
        "DestPath": format!("secrets/{dest}"),
        "Envvars": env,
        "ChangeMode": "restart",
        "Perms": "0400",
    })
}

fn dynamic_ports() -> Value {
    json!([{ "Mode": "host", "DynamicPorts": [{ "Label": "http" }, { "Label": "admin" }] }])
}

fn restart_policy(plan: &Plan) -> Value {
    json!({
        "Attempts": 10,
        "Interval": 30 * 60 * SECOND_NS,
        "Delay": plan.cluster.restart.backoff_initial_ms * 1_000_000,
        "Mode": "delay",
    })
}

fn tcp_check(port: &str) -> Value {
    json!({
        "Name": format!("{port}-tcp"),
        "Type": "tcp",
        "PortLabel": port,
        "Interval": 5 * SECOND_NS,
        "Timeout": SECOND_NS,
    })
}

/// The service every node of `pool` registers: the tags carry what the router's template needs.
fn node_service(plan: &Plan, pool: &str) -> Value {
    json!({
        "Name": pool_service(plan, pool),
        "Provider": "nomad",
        "PortLabel": "http",
        "Tags": [
            "janus",
            format!("pool={pool}"),
            format!("node={pool}-${{NOMAD_ALLOC_INDEX}}"),
            "admin=${NOMAD_ADDR_admin}",
        ],
        "Checks": [tcp_check("http")],
    })
}

/// The qemu driver's `machine_type` for `machine` (Nomad 2.0+: it becomes `-machine
/// type=<machine_type>,accel=…`, so machine properties can follow the name); None for `pc`, which
/// the job leaves to the driver's default so that Nomad 1.x takes it.
pub fn machine_type(machine: NomadMachine) -> Option<&'static str> {
    match machine {
        NomadMachine::Pc => None,
        NomadMachine::Microvm => Some("microvm,acpi=off,rtc=on,pit=on,pic=on"),
    }
}

/// The qemu driver's `args` for a unikernel node (the driver puts its fixed arguments first).
pub fn qemu_args(plan: &Plan, node_id: &str, machine: NomadMachine) -> Vec<String> {
    let nic = match machine {
        // romfile=: no iPXE option ROM to load at boot.
        NomadMachine::Pc => "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
        NomadMachine::Microvm => "virtio-net-device,netdev=n0",
    };
    let netdev = format!(
        "user,id=n0,net=10.0.2.0/24,\
         hostfwd=tcp:${{NOMAD_IP_http}}:${{NOMAD_PORT_http}}-:{GUEST_SERVICE_PORT},\
         hostfwd=tcp:${{NOMAD_IP_admin}}:${{NOMAD_PORT_admin}}-:{GUEST_ADMIN_PORT}"
    );
    [
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-netdev",
        &netdev,
        "-device",
        nic,
        "-kernel",
        &format!("${{NOMAD_TASK_DIR}}/{}.img", plan.package),
        "-append",
        &uk_cmdline(node_id, &[]),
        "-fw_cfg",
        &format!(
            "name={},file=${{NOMAD_SECRETS_DIR}}/admin-token",
            crate::flavor::uk::FW_CFG_TOKEN
        ),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn uk_group(plan: &Plan, opts: &DeployOpts) -> Value {
    let id = "stable-${NOMAD_ALLOC_INDEX}";
    let img = format!("{}.img", plan.package);
    let mut config = json!({
        "image_path": format!("local/{img}"),
        "drive_interface": "none",
        "accelerator": "kvm",
        "args": qemu_args(plan, id, opts.nomad_machine),
    });
    if let Some(m) = machine_type(opts.nomad_machine) {
        config["machine_type"] = m.into();
    }
    json!({
        "Name": "stable",
        "Count": plan.cluster.stable.count,
        "Networks": dynamic_ports(),
        "RestartPolicy": restart_policy(plan),
        "Services": [node_service(plan, "stable")],
        "Tasks": [{
            "Name": "node",
            "Driver": "qemu",
            "Config": config,
            "Artifacts": [artifact(opts, &img)],
            "Templates": [secret_template(var_template(plan, "node_token"), "admin-token", false)],
            "Resources": {
                "CPU": 200,
                "MemoryMB": plan.cluster.stable.memory_mib.max(QEMU_DRIVER_MIN_MEMORY_MB),
            },
            "KillTimeout": 5 * SECOND_NS,
        }],
    })
}

fn unix_group(plan: &Plan, opts: &DeployOpts, pool: &str, count: u32) -> Value {
    let bin = format!("{}-unix", plan.package);
    json!({
        "Name": pool,
        "Count": count,
        "Networks": dynamic_ports(),
        "RestartPolicy": restart_policy(plan),
        "Services": [node_service(plan, pool)],
        "Tasks": [{
            "Name": "node",
            "Driver": "exec",
            "Config": {
                "command": format!("${{NOMAD_TASK_DIR}}/{bin}"),
                "args": [
                    "--listen", "${NOMAD_ADDR_http}",
                    "--admin", "${NOMAD_ADDR_admin}",
                    "--node-id", format!("{pool}-${{NOMAD_ALLOC_INDEX}}"),
                    "--log-level", plan.cluster.debug.log_level,
                    "--log-format", "json",
                ],
            },
            "Artifacts": [artifact(opts, &bin)],
            "Templates": [secret_template(
                format!("{}={}\n", crate::launch::ADMIN_TOKEN_ENV, var_template(plan, "node_token")),
                "node.env",
                true,
            )],
            "Resources": { "CPU": 200, "MemoryMB": 128 },
        }],
    })
}

/// The `[[nodes]]` of one pool, rendered by Nomad's template engine from the pool's services.
fn nodes_template(plan: &Plan, pool: &str) -> String {
    let tag = |key: &str| {
        format!(
            "{{{{ range .Tags }}}}{{{{ if . | regexMatch \"^{key}=\" }}}}{{{{ . | regexReplaceAll \"^{key}=\" \"\" }}}}{{{{ end }}}}{{{{ end }}}}"
        )
    };
    format!(
        "{{{{- range nomadService \"{service}\" }}}}\n\
         [[nodes]]\n\
         id = \"{id}\"\n\
         pool = \"{pool}\"\n\
         addr = \"{{{{ .Address }}}}:{{{{ .Port }}}}\"\n\
         admin_addr = \"{admin}\"\n\
         {{{{ end }}}}\n",
        service = pool_service(plan, pool),
        id = tag("node"),
        admin = tag("admin"),
    )
}

/// The router's `router.toml` template.
pub fn router_template(plan: &Plan) -> anyhow::Result<String> {
    let port = match plan.cluster.router.listen.port() {
        0 => 8000,
        p => p,
    };
    let admin_port = match plan.cluster.router.admin.port() {
        0 => 8001,
        p => p,
    };
    let doc = crate::up::router_settings(
        &plan.cluster,
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
        // Go template raw string: no quotes inside the TOML string.
        "{{ env `NOMAD_ALLOC_DIR` }}/data/faults.db",
    );
    let value: toml::Value = serde_json::from_value(doc)?;
    let mut text = format!(
        "# Generated by `janus deploy --emit nomad` for cluster '{}'; rendered by Nomad.\n\
         # Tokens come from the environment (secrets/router.env).\n{}",
        plan.cluster.name,
        toml::to_string_pretty(&value)?
    );
    for pool in ["stable", "debug"] {
        text.push_str(&nodes_template(plan, pool));
    }
    Ok(text)
}

fn router_group(plan: &Plan, opts: &DeployOpts) -> anyhow::Result<Value> {
    let port = match plan.cluster.router.listen.port() {
        0 => 8000,
        p => p,
    };
    let env = format!(
        "JANUS_ROUTER_ADMIN__TOKEN={}\nJANUS_ROUTER_UPSTREAM__ADMIN_TOKEN={}\n",
        var_template(plan, "router_token"),
        var_template(plan, "node_token")
    );
    Ok(json!({
        "Name": "router",
        "Count": 1,
        "Networks": [{ "Mode": "host", "ReservedPorts": [{ "Label": "http", "Value": port }] }],
        // The fault store (alloc/data) follows the router when Nomad can keep or move it.
        "EphemeralDisk": { "Sticky": true, "Migrate": true, "SizeMB": 512 },
        "RestartPolicy": restart_policy(plan),
        "Services": [{
            "Name": plan.prefix,
            "Provider": "nomad",
            "PortLabel": "http",
            "Tags": ["janus", "router"],
            "Checks": [tcp_check("http")],
        }],
        "Tasks": [{
            "Name": "router",
            "Driver": "exec",
            "Config": {
                "command": "${NOMAD_TASK_DIR}/lb-router",
                "args": ["--config", "${NOMAD_TASK_DIR}/router.toml"],
            },
            "Artifacts": [artifact(opts, "lb-router")],
            "Templates": [
                {
                    "EmbeddedTmpl": router_template(plan)?,
                    "DestPath": "local/router.toml",
                    "ChangeMode": "signal",
                    "ChangeSignal": "SIGHUP",
                },
                secret_template(env, "router.env", true),
            ],
            "Resources": { "CPU": 500, "MemoryMB": 256 },
        }],
    }))
}

/// The whole job.
pub fn job(plan: &Plan, opts: &DeployOpts) -> anyhow::Result<Value> {
    let mut groups = Vec::new();
    if plan.cluster.stable.count > 0 {
        groups.push(if plan.stable_uk {
            uk_group(plan, opts)
        } else {
            unix_group(plan, opts, "stable", plan.cluster.stable.count)
        });
    }
    if plan.cluster.debug.count > 0 {
        groups.push(unix_group(plan, opts, "debug", plan.cluster.debug.count));
    }
    groups.push(router_group(plan, opts)?);
    Ok(json!({
        "Job": {
            "ID": plan.prefix,
            "Name": plan.prefix,
            "Type": "service",
            "Datacenters": ["*"],
            "Meta": { "janus.cluster": plan.cluster.name, "janus.service": plan.package },
            "TaskGroups": groups,
        }
    }))
}

/// Writes the Nomad job.
pub(super) fn emit(
    plan: &Plan,
    dir: &Path,
    opts: &DeployOpts,
    out: &mut Emitted,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&job(plan, opts)?)? + "\n";
    write(dir, &format!("{}.nomad.json", plan.prefix), &text, out)?;
    if plan.stable_uk && plan.cluster.stable.memory_mib < QEMU_DRIVER_MIN_MEMORY_MB {
        out.notes.push(format!(
            "stable.memory_mib = {}: Nomad's qemu driver refuses less than {QEMU_DRIVER_MIN_MEMORY_MB} MB, \
             so each unikernel node reserves (and its guest gets) {QEMU_DRIVER_MIN_MEMORY_MB} MB",
            plan.cluster.stable.memory_mib
        ));
    }
    Ok(())
}

//! Kubernetes manifests (KubeVirt for the unikernel nodes).
//!
//! | file | objects |
//! |---|---|
//! | `10-services.yaml` | a Service per node (`janus-<c>-stable-0`, `janus-<c>-debug-0`: the router's static node list), per pool (`janus-<c>-stable`, `janus-<c>-debug`, labelled `janus.dev/pool`: what EndpointSlice discovery will watch), and the router's (`janus-<c>`) |
//! | `20-router-config.yaml` | the router's ConfigMap (`router.toml` without tokens or nodes) and the fault store's PersistentVolumeClaim |
//! | `30-nodes.yaml` | one Deployment per process node (replicas 1: each has its own Service, so the router reaches *that* node's admin API for traces and state) |
//! | `40-router.yaml` | the router's Deployment |
//! | `vms/stable.yaml.in` | one KubeVirt VirtualMachine per stable node, kernel boot from a container disk; `@JANUS_NODE_TOKEN@` is filled in by `apply.sh` |
//! | `images/{uk,unix,router}/Containerfile` | the three images |
//! | `apply.sh` | checks the Secret, applies the directory, renders and applies the VirtualMachines |
//!
//! Files apply in name order, so the Services exist before the router's pod is created: its node
//! list is `JANUS_ROUTER_NODES`, whose addresses are the Services' `$(…_SERVICE_HOST)` variables
//! (Kubernetes expands them in `env[].value`). The tokens come from the Secret `janus-<c>-admin`
//! (`router-token`, `node-token`) through `secretKeyRef`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

use super::{DeployOpts, Emitted, GUEST_ADMIN_PORT, GUEST_SERVICE_PORT, Plan, uk_cmdline, write};

/// The placeholder `apply.sh` replaces with the node token when it applies the VirtualMachines.
pub const TOKEN_PLACEHOLDER: &str = "@JANUS_NODE_TOKEN@";
/// Port of the service listener of a process node inside its pod.
pub const UNIX_SERVICE_PORT: u16 = 8080;
/// Port of the admin listener of a process node inside its pod.
pub const UNIX_ADMIN_PORT: u16 = 8081;
/// The port every node Service exposes for the service listener (the router's `addr`).
pub const NODE_SERVICE_PORT: u16 = 80;
/// The port every node Service exposes for the admin listener (the router's `admin_addr`).
pub const NODE_ADMIN_PORT: u16 = 81;
/// Where the router's pod mounts the fault store volume.
pub const FAULTS_DIR: &str = "/var/lib/janus";
/// Where the router's pod mounts its ConfigMap.
pub const CONFIG_DIR: &str = "/etc/janus";

/// Files written only when their pool has nodes.
const OPTIONAL_FILES: [&str; 3] = [
    "30-nodes.yaml",
    "vms/stable.yaml.in",
    "images/uk/Containerfile",
];

/// The Secret that holds the tokens (created by the operator, never emitted).
pub fn secret_name(plan: &Plan) -> String {
    format!("{}-admin", plan.prefix)
}

/// The environment variable Kubernetes sets in pods for a Service's cluster IP.
pub fn service_host_env(service: &str) -> String {
    format!(
        "{}_SERVICE_HOST",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

fn labels(plan: &Plan, component: &str, extra: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("app.kubernetes.io/name".into(), "janus".into());
    m.insert(
        "app.kubernetes.io/instance".into(),
        plan.prefix.clone().into(),
    );
    m.insert("app.kubernetes.io/component".into(), component.into());
    m.insert("janus.dev/cluster".into(), plan.cluster.name.clone().into());
    for (k, v) in extra {
        m.insert((*k).into(), (*v).into());
    }
    Value::Object(m)
}

fn selector(plan: &Plan, key: &str, value: &str) -> Value {
    json!({ "janus.dev/cluster": plan.cluster.name, key: value })
}

fn service(plan: &Plan, name: &str, component: &str, pool: &str, sel: Value) -> Value {
    // A VirtualMachine's ports are the guest's own (masquerade forwards them unchanged); a process
    // node's are its container's named ports.
    let (http, admin): (Value, Value) = if pool == "stable" && plan.stable_uk {
        (GUEST_SERVICE_PORT.into(), GUEST_ADMIN_PORT.into())
    } else {
        ("http".into(), "admin".into())
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "labels": labels(plan, component, &[("janus.dev/pool", pool)]) },
        "spec": {
            "type": "ClusterIP",
            "selector": sel,
            "ports": [
                { "name": "http", "port": NODE_SERVICE_PORT, "targetPort": http, "protocol": "TCP" },
                { "name": "admin", "port": NODE_ADMIN_PORT, "targetPort": admin, "protocol": "TCP" },
            ],
        },
    })
}

fn image(opts: &DeployOpts, name: &str) -> String {
    format!(
        "{}/{name}:{}",
        opts.image_repo.trim_end_matches('/'),
        opts.tag
    )
}

fn secret_env(plan: &Plan, name: &str, key: &str) -> Value {
    json!({
        "name": name,
        "valueFrom": { "secretKeyRef": { "name": secret_name(plan), "key": key } },
    })
}

/// Security settings of every container Janus runs in a pod.
fn hardened() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// The Services: one per node, one per pool, the router's.
fn services(plan: &Plan) -> Vec<Value> {
    let mut docs = Vec::new();
    for (pool, ids) in [("stable", plan.stable_ids()), ("debug", plan.debug_ids())] {
        if ids.is_empty() {
            continue;
        }
        docs.push(service(
            plan,
            &format!("{}-{pool}", plan.prefix),
            "pool",
            pool,
            selector(plan, "janus.dev/pool", pool),
        ));
        for id in ids {
            docs.push(service(
                plan,
                &format!("{}-{id}", plan.prefix),
                "node",
                pool,
                selector(plan, "janus.dev/node", &id),
            ));
        }
    }
    docs.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": plan.prefix, "labels": labels(plan, "router", &[]) },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(plan, "app.kubernetes.io/component", "router"),
            "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
        },
    }));
    docs
}

fn port_or(addr: SocketAddr, default: u16) -> u16 {
    if addr.port() == 0 {
        default
    } else {
        addr.port()
    }
}

/// The router's listen port inside its pod.
pub fn router_port(plan: &Plan) -> u16 {
    port_or(plan.cluster.router.listen, 8000)
}

/// `router.toml` of the ConfigMap: the cluster file's settings; no tokens, no nodes (both from the
/// environment).
pub fn router_toml(plan: &Plan) -> anyhow::Result<String> {
    let listen = SocketAddr::from(([0, 0, 0, 0], router_port(plan)));
    // Loopback: reached with `kubectl port-forward`, never from the pod network.
    let admin = SocketAddr::from(([127, 0, 0, 1], port_or(plan.cluster.router.admin, 8001)));
    let doc = crate::up::router_settings(
        &plan.cluster,
        listen,
        admin,
        &format!("{FAULTS_DIR}/faults.db"),
    );
    let value: toml::Value = serde_json::from_value(doc)?;
    Ok(format!(
        "# Generated by `janus deploy` for cluster '{}'. admin.token, upstream.admin_token and nodes\n\
         # come from the environment (JANUS_ROUTER_*): see the router's Deployment.\n{}",
        plan.cluster.name,
        toml::to_string_pretty(&value)?
    ))
}

/// `JANUS_ROUTER_NODES`: every node at its Service's cluster IP (figment parses the value as an
/// array of tables). Kubernetes replaces each `$(…_SERVICE_HOST)`.
pub fn router_nodes_env(plan: &Plan) -> String {
    let mut out = String::from("[");
    let nodes = plan
        .stable_ids()
        .into_iter()
        .map(|id| ("stable", id))
        .chain(plan.debug_ids().into_iter().map(|id| ("debug", id)));
    for (i, (pool, id)) in nodes.enumerate() {
        let host = format!("$({})", service_host_env(&format!("{}-{id}", plan.prefix)));
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{{id = \"{id}\", pool = \"{pool}\", addr = \"{host}:{NODE_SERVICE_PORT}\", \
             admin_addr = \"{host}:{NODE_ADMIN_PORT}\"}}"
        );
    }
    out.push(']');
    out
}

fn router_objects(plan: &Plan) -> anyhow::Result<Vec<Value>> {
    let name = format!("{}-router", plan.prefix);
    let config = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "labels": labels(plan, "router", &[]) },
        "data": { "router.toml": router_toml(plan)? },
    });
    let pvc = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": format!("{}-faults", plan.prefix), "labels": labels(plan, "router", &[]) },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } },
        },
    });
    Ok(vec![config, pvc])
}

fn router_deployment(plan: &Plan, opts: &DeployOpts) -> Value {
    let name = format!("{}-router", plan.prefix);
    let pod_labels = labels(plan, "router", &[]);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": pod_labels },
        "spec": {
            "replicas": 1,
            // One writer of the SQLite fault store on a ReadWriteOnce volume.
            "strategy": { "type": "Recreate" },
            "selector": { "matchLabels": selector(plan, "app.kubernetes.io/component", "router") },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": {
                    // The node list is made of the Services' environment variables.
                    "enableServiceLinks": true,
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532 },
                    "containers": [{
                        "name": "lb-router",
                        "image": image(opts, "lb-router"),
                        "args": ["--config", format!("{CONFIG_DIR}/router.toml")],
                        "env": [
                            secret_env(plan, "JANUS_ROUTER_ADMIN__TOKEN", "router-token"),
                            secret_env(plan, "JANUS_ROUTER_UPSTREAM__ADMIN_TOKEN", "node-token"),
                            { "name": "JANUS_ROUTER_NODES", "value": router_nodes_env(plan) },
                        ],
                        "ports": [{ "name": "http", "containerPort": router_port(plan), "protocol": "TCP" }],
                        "readinessProbe": { "tcpSocket": { "port": "http" }, "periodSeconds": 2 },
                        "livenessProbe": { "tcpSocket": { "port": "http" }, "periodSeconds": 5, "failureThreshold": 3 },
                        "resources": { "requests": { "cpu": "250m", "memory": "128Mi" } },
                        "securityContext": hardened(),
                        "volumeMounts": [
                            { "name": "config", "mountPath": CONFIG_DIR, "readOnly": true },
                            { "name": "faults", "mountPath": FAULTS_DIR },
                            // SQLite's temporary files; the root file system is read-only.
                            { "name": "tmp", "mountPath": "/tmp" },
                        ],
                    }],
                    "volumes": [
                        { "name": "config", "configMap": { "name": name } },
                        { "name": "faults", "persistentVolumeClaim": { "claimName": format!("{}-faults", plan.prefix) } },
                        { "name": "tmp", "emptyDir": {} },
                    ],
                },
            },
        },
    })
}

/// One Deployment (replicas 1) per process node of `pool`.
fn unix_deployments(plan: &Plan, opts: &DeployOpts, pool: &str, ids: &[String]) -> Vec<Value> {
    let program = format!("/janus/{}-unix", plan.package);
    ids.iter()
        .map(|id| {
            let pod_labels = labels(
                plan,
                "node",
                &[("janus.dev/pool", pool), ("janus.dev/node", id)],
            );
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": { "name": format!("{}-{id}", plan.prefix), "labels": pod_labels },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": selector(plan, "janus.dev/node", id) },
                    "template": {
                        "metadata": { "labels": pod_labels },
                        "spec": {
                            "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532 },
                            "containers": [{
                                "name": "node",
                                "image": image(opts, &format!("{}-unix", plan.package)),
                                "command": [program],
                                "args": [
                                    "--listen", format!("0.0.0.0:{UNIX_SERVICE_PORT}"),
                                    "--admin", format!("0.0.0.0:{UNIX_ADMIN_PORT}"),
                                    "--node-id", id,
                                    "--log-level", plan.cluster.debug.log_level,
                                    "--log-format", "json",
                                ],
                                "env": [secret_env(plan, crate::launch::ADMIN_TOKEN_ENV, "node-token")],
                                "ports": [
                                    { "name": "http", "containerPort": UNIX_SERVICE_PORT, "protocol": "TCP" },
                                    { "name": "admin", "containerPort": UNIX_ADMIN_PORT, "protocol": "TCP" },
                                ],
                                "readinessProbe": { "tcpSocket": { "port": "http" }, "periodSeconds": 2 },
                                "livenessProbe": { "tcpSocket": { "port": "http" }, "periodSeconds": 5, "failureThreshold": 3 },
                                "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } },
                                "securityContext": hardened(),
                            }],
                        },
                    },
                },
            })
        })
        .collect()
}

/// One KubeVirt VirtualMachine per stable unikernel node.
fn virtual_machines(plan: &Plan, opts: &DeployOpts) -> Vec<Value> {
    let memory = format!("{}Mi", plan.cluster.stable.memory_mib);
    plan.stable_ids()
        .iter()
        .map(|id| {
            let vm_labels = labels(
                plan,
                "node",
                &[("janus.dev/pool", "stable"), ("janus.dev/node", id)],
            );
            let args = uk_cmdline(id, &[format!("janus.token={TOKEN_PLACEHOLDER}")]);
            json!({
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachine",
                "metadata": { "name": format!("{}-{id}", plan.prefix), "labels": vm_labels },
                "spec": {
                    "runStrategy": "Always",
                    "template": {
                        "metadata": { "labels": vm_labels },
                        "spec": {
                            "domain": {
                                "machine": { "type": "q35" },
                                "cpu": { "cores": 1 },
                                "memory": { "guest": memory },
                                "resources": { "requests": { "memory": memory } },
                                "firmware": {
                                    "kernelBoot": {
                                        "kernelArgs": args,
                                        "container": {
                                            "image": image(opts, &format!("{}-uk", plan.package)),
                                            "kernelPath": format!("/boot/{}.img", plan.package),
                                            "imagePullPolicy": "IfNotPresent",
                                        },
                                    },
                                },
                                "devices": {
                                    "autoattachGraphicsDevice": false,
                                    "autoattachMemBalloon": false,
                                    "autoattachSerialConsole": true,
                                    "logSerialConsole": true,
                                    "interfaces": [{
                                        "name": "default",
                                        "model": "virtio",
                                        "masquerade": {},
                                        "ports": [
                                            { "name": "http", "port": GUEST_SERVICE_PORT, "protocol": "TCP" },
                                            { "name": "admin", "port": GUEST_ADMIN_PORT, "protocol": "TCP" },
                                        ],
                                    }],
                                },
                            },
                            "networks": [{ "name": "default", "pod": {} }],
                            // Nothing to flush: the unikernel has no disk.
                            "terminationGracePeriodSeconds": 5,
                            "readinessProbe": { "tcpSocket": { "port": GUEST_SERVICE_PORT }, "periodSeconds": 2 },
                            // Without isa-debug-exit a panicked unikernel halts instead of exiting:
                            // its port stops answering and this restarts the VMI.
                            "livenessProbe": {
                                "tcpSocket": { "port": GUEST_SERVICE_PORT },
                                "initialDelaySeconds": 5,
                                "periodSeconds": 5,
                                "failureThreshold": 3,
                            },
                        },
                    },
                },
            })
        })
        .collect()
}

/// Several documents as one multi-document YAML file.
fn yaml_docs(header: &str, docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(out)
}

fn containerfiles(plan: &Plan, opts: &DeployOpts) -> Vec<(String, String)> {
    let pkg = &plan.package;
    let svc = plan.cluster.service.display();
    let distroless = "gcr.io/distroless/cc-debian12:nonroot";
    let mut files = Vec::new();
    if plan.stable_uk && plan.cluster.stable.count > 0 {
        files.push((
            "images/uk/Containerfile".to_string(),
            format!(
                "# The unikernel as a KubeVirt kernel-boot container disk: the PVH ELF and nothing else.\n\
                 # Build context: a directory holding {pkg}.img, from\n\
                 #   janus build {svc} --flavor uk\n\
                 # then: podman build -t {img} -f Containerfile . && podman push {img}\n\
                 # (107 is the qemu user of KubeVirt's virt-launcher.)\n\
                 FROM scratch\n\
                 COPY --chown=107:107 {pkg}.img /boot/{pkg}.img\n",
                img = image(opts, &format!("{pkg}-uk")),
            ),
        ));
    }
    files.push((
        "images/unix/Containerfile".to_string(),
        format!(
            "# The instrumented process build (glibc, dynamically linked: build it on Debian 12 so the\n\
             # base image's glibc is the one it was linked against).\n\
             # Build context: a directory holding {pkg}-unix, from\n\
             #   janus build {svc} --flavor unix\n\
             # then: podman build -t {img} -f Containerfile . && podman push {img}\n\
             FROM {distroless}\n\
             COPY {pkg}-unix /janus/{pkg}-unix\n\
             USER 65532:65532\n\
             ENTRYPOINT [\"/janus/{pkg}-unix\"]\n",
            img = image(opts, &format!("{pkg}-unix")),
        ),
    ));
    files.push((
        "images/router/Containerfile".to_string(),
        format!(
            "# The router. Build context: a directory holding lb-router, from\n\
             #   cargo build --release -p lb-router   (target/release/lb-router)\n\
             # then: podman build -t {img} -f Containerfile . && podman push {img}\n\
             FROM {distroless}\n\
             COPY lb-router /janus/lb-router\n\
             USER 65532:65532\n\
             ENTRYPOINT [\"/janus/lb-router\"]\n",
            img = image(opts, "lb-router"),
        ),
    ));
    files
}

fn apply_script(plan: &Plan) -> String {
    format!(
        r#"#!/usr/bin/env bash
# Generated by `janus deploy --emit kubernetes` for cluster '{cluster}'.
# Applies this directory, then the VirtualMachines with the node token filled in from the Secret.
# Extra arguments (-n NAMESPACE, --context ...) go to every kubectl call; KUBECTL overrides the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kubectl=${{KUBECTL:-kubectl}}
secret={secret}
if ! "$kubectl" "$@" get secret "$secret" >/dev/null; then
    echo "apply.sh: create the Secret $secret first (keys router-token and node-token; see docs/DEPLOY.md)" >&2
    exit 1
fi
token=$("$kubectl" "$@" get secret "$secret" -o 'jsonpath={{.data.node-token}}' | base64 -d)
if [[ ! $token =~ ^[A-Za-z0-9._-]{{16,}}$ ]]; then
    echo "apply.sh: node-token in $secret must be 16 or more of A-Z a-z 0-9 . _ - (the unikernel reads it from its kernel command line)" >&2
    exit 1
fi
"$kubectl" "$@" apply -f "$here"
shopt -s nullglob
for f in "$here"/vms/*.yaml.in; do
    # Bash substitution, so the token is on no command line.
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%s\n' "${{line//{placeholder}/$token}}"
    done <"$f" | "$kubectl" "$@" apply -f -
done
"#,
        cluster = plan.cluster.name,
        secret = secret_name(plan),
        placeholder = TOKEN_PLACEHOLDER,
    )
}

/// Writes the Kubernetes files.
pub(super) fn emit(
    plan: &Plan,
    dir: &Path,
    opts: &DeployOpts,
    out: &mut Emitted,
) -> anyhow::Result<()> {
    let name = &plan.cluster.name;
    if name == "router" || name.starts_with("router-") {
        // The Services' environment variables would start with JANUS_ROUTER_, the router's own
        // configuration prefix, and be refused as unknown keys.
        anyhow::bail!(
            "name = {name:?}: on Kubernetes the Services of cluster {name:?} would set variables \
             named JANUS_ROUTER_* in the router's pod, which the router reads as its configuration; \
             rename the cluster"
        );
    }
    // A file a previous emission wrote and this one does not (a pool that is now empty) would
    // otherwise be applied with the rest.
    for rel in OPTIONAL_FILES {
        let path = dir.join(rel);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| anyhow::anyhow!("cannot remove stale {}: {e}", path.display()))?;
        }
    }
    let header = format!(
        "Generated by `janus deploy --emit kubernetes` for cluster '{}' (service {}).\n\
         Apply with ./apply.sh (it needs the Secret {}: docs/DEPLOY.md).",
        plan.cluster.name,
        plan.package,
        secret_name(plan)
    );
    write(
        dir,
        "10-services.yaml",
        &yaml_docs(&header, &services(plan))?,
        out,
    )?;
    write(
        dir,
        "20-router-config.yaml",
        &yaml_docs(&header, &router_objects(plan)?)?,
        out,
    )?;
    let mut nodes = unix_deployments(plan, opts, "debug", &plan.debug_ids());
    let mut vms = Vec::new();
    if plan.stable_uk {
        vms = virtual_machines(plan, opts);
    } else {
        nodes.extend(unix_deployments(plan, opts, "stable", &plan.stable_ids()));
    }
    if !nodes.is_empty() {
        write(dir, "30-nodes.yaml", &yaml_docs(&header, &nodes)?, out)?;
    }
    write(
        dir,
        "40-router.yaml",
        &yaml_docs(&header, &[router_deployment(plan, opts)])?,
        out,
    )?;
    if !vms.is_empty() {
        let vm_header = format!(
            "{header}\nNot for kubectl as it is: apply.sh replaces {TOKEN_PLACEHOLDER} with the node token."
        );
        write(
            dir,
            "vms/stable.yaml.in",
            &yaml_docs(&vm_header, &vms)?,
            out,
        )?;
    }
    for (rel, text) in containerfiles(plan, opts) {
        write(dir, &rel, &text, out)?;
    }
    write(dir, "apply.sh", &apply_script(plan), out)?;
    set_executable(&dir.join("apply.sh"))?;
    Ok(())
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| anyhow::anyhow!("cannot make {} executable: {e}", path.display()))
}

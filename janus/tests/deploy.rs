//! `janus deploy --emit kubernetes|nomad`, validated offline (no Kubernetes, KubeVirt or Nomad runs
//! here):
//! - every Kubernetes document deserializes into the `k8s-openapi` type of its kind (Kubernetes 1.33)
//!   and serializes back to the same JSON (k8s-openapi ignores unknown fields: the round trip is what
//!   catches a misspelt one); KubeVirt's VirtualMachine, a CRD, into the serde structs below, written
//!   from KubeVirt's `api/core/v1` Go types (`schema.go`, `types.go`) with unknown fields refused;
//! - the router's ConfigMap plus the environment Kubernetes would give its pod (the Secret's keys,
//!   the Services' variables, `$(VAR)` expanded) pass the real `lb-router --check`;
//! - `apply.sh` against a stand-in kubectl fills the token into the VirtualMachines only;
//! - the Nomad job parses into typed structs; its qemu arguments, behind the qemu driver's fixed
//!   prefix (`-machine type=pc`), boot the real unikernel image under QEMU and it answers;
//! - bad input is refused with a message naming the problem.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn janus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_janus"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("janus-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// A cluster file: 2 unikernel nodes of 64 MiB, 2 debug nodes, the router on port 8080.
fn cluster_file(dir: &Path, name: &str) -> PathBuf {
    let service = janus::janus_home().join("samples/faulty");
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "name = {name:?}\nservice = {service:?}\n\n[stable]\ncount = 2\nmemory_mib = 64\n\n\
             [debug]\ncount = 2\nspare = 0\nlog_level = \"debug\"\n\n\
             [router]\nlisten = \"0.0.0.0:8080\"\nstable_weight = 80\ndebug_weight = 20\n"
        ),
    )
    .expect("write cluster file");
    path
}

fn deploy(args: &[&str]) -> Output {
    Command::new(janus_bin())
        .arg("deploy")
        .args(args)
        .output()
        .expect("janus runs")
}

fn emit(kind: &str, file: &Path, out: &Path, flags: &[&str]) {
    let mut args = vec![
        "--emit",
        kind,
        out.to_str().expect("utf8"),
        "-f",
        file.to_str().expect("utf8"),
    ];
    args.extend_from_slice(flags);
    let o = deploy(&args);
    assert!(
        o.status.success(),
        "janus deploy --emit {kind}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A temporary directory with the cluster "shop" emitted as `kind` into its `out/`.
fn emitted(tag: &str, kind: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let file = cluster_file(&dir, "shop");
    let out = dir.join("out");
    emit(kind, &file, &out, &[]);
    (dir, out)
}

// KubeVirt's VirtualMachine (kubevirt.io/v1), the fields Janus emits; unknown fields refused.

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VirtualMachine {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: VmSpec,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum RunStrategy {
    Always,
    Halted,
    Manual,
    RerunOnFailure,
    Once,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VmSpec {
    run_strategy: RunStrategy,
    template: VmiTemplate,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmiTemplate {
    metadata: ObjectMeta,
    spec: VmiSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VmiSpec {
    domain: DomainSpec,
    networks: Vec<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    termination_grace_period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness_probe: Option<Probe>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DomainSpec {
    machine: Machine,
    cpu: Cpu,
    memory: Memory,
    resources: Resources,
    firmware: Firmware,
    devices: Devices,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Machine {
    r#type: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cpu {
    cores: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Memory {
    guest: Quantity,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    requests: BTreeMap<String, Quantity>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Firmware {
    kernel_boot: KernelBoot,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KernelBoot {
    kernel_args: String,
    container: KernelBootContainer,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KernelBootContainer {
    image: String,
    kernel_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_pull_policy: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Devices {
    autoattach_graphics_device: Option<bool>,
    autoattach_mem_balloon: Option<bool>,
    autoattach_serial_console: Option<bool>,
    log_serial_console: Option<bool>,
    interfaces: Vec<Interface>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Interface {
    name: String,
    model: String,
    masquerade: Empty,
    ports: Vec<Port>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Port {
    name: String,
    port: i32,
    protocol: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    name: String,
    pod: Empty,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Probe {
    tcp_socket: TCPSocketAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_delay_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_threshold: Option<i32>,
}

/// Every YAML document of a file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .collect()
}

/// Deserializes `doc` as `T` and checks that nothing was lost on the way back.
fn typed<T: serde::de::DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            serde_json::to_string_pretty(doc).unwrap_or_default()
        )
    });
    let back = serde_json::to_value(&t).expect("serialize");
    assert_eq!(&back, doc, "fields lost or changed in a round trip");
    t
}

#[derive(Default)]
struct Manifests {
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    claims: Vec<PersistentVolumeClaim>,
    vms: Vec<VirtualMachine>,
    raw: Vec<Value>,
}

fn load_manifests(dir: &Path) -> Manifests {
    let mut m = Manifests::default();
    let mut files = vec![dir.join("vms/stable.yaml.in")];
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p);
        }
    }
    for f in files {
        for doc in documents(&f) {
            match doc["kind"].as_str() {
                Some("Service") => m.services.push(typed(&doc)),
                Some("Deployment") => m.deployments.push(typed(&doc)),
                Some("ConfigMap") => m.config_maps.push(typed(&doc)),
                Some("PersistentVolumeClaim") => m.claims.push(typed(&doc)),
                Some("VirtualMachine") => m.vms.push(typed(&doc)),
                other => panic!("unexpected kind {other:?} in {}", f.display()),
            }
            m.raw.push(doc);
        }
    }
    m
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// The labels of every pod template (Deployments' pods and VirtualMachines' virt-launcher pods).
fn pod_labels(m: &Manifests) -> Vec<BTreeMap<String, String>> {
    let mut all: Vec<_> = m
        .deployments
        .iter()
        .filter_map(|d| d.spec.as_ref()?.template.metadata.as_ref().map(labels))
        .collect();
    all.extend(m.vms.iter().map(|v| labels(&v.spec.template.metadata)));
    all
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The variables Kubernetes gives a pod for each Service (docker-links style), at made-up cluster IPs.
fn service_env(m: &Manifests) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (i, s) in m.services.iter().enumerate() {
        let name = s.metadata.name.clone().expect("name");
        let prefix = name.to_uppercase().replace('-', "_");
        let ip = format!("10.96.{}.{}", i / 200, 10 + i % 200);
        let ports = s
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        env.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        for (j, p) in ports.iter().enumerate() {
            let port = p.port;
            if j == 0 {
                env.insert(format!("{prefix}_SERVICE_PORT"), port.to_string());
                env.insert(format!("{prefix}_PORT"), format!("tcp://{ip}:{port}"));
            }
            if let Some(n) = &p.name {
                env.insert(
                    format!("{prefix}_SERVICE_PORT_{}", n.to_uppercase()),
                    port.to_string(),
                );
            }
            let base = format!("{prefix}_PORT_{port}_TCP");
            env.insert(base.clone(), format!("tcp://{ip}:{port}"));
            env.insert(format!("{base}_PROTO"), "tcp".into());
            env.insert(format!("{base}_PORT"), port.to_string());
            env.insert(format!("{base}_ADDR"), ip.clone());
        }
    }
    env
}

/// Kubernetes' `$(VAR)` expansion in `env[].value`: defined references are replaced, others stay.
fn expand(value: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if env.contains_key(&after[..end]) => {
                out.push_str(&env[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The release lb-router `janus up` uses.
fn router_bin() -> PathBuf {
    janus::up::build_router(&janus::build::Layout::new()).expect("build lb-router")
}

/// `lb-router --check` with this config file and exactly this environment.
fn router_check(bin: &Path, config: &Path, env: &HashMap<String, String>) -> Output {
    Command::new(bin)
        .arg("--check")
        .arg("--config")
        .arg(config)
        .env_clear()
        .envs(env)
        .output()
        .expect("lb-router runs")
}

#[test]
fn kubernetes_manifests_are_valid_objects_and_the_router_config_loads() {
    let (dir, out) = emitted("k8s", "kubernetes");
    let m = load_manifests(&out);

    // 2 VMs, 2 debug Deployments + the router's, Services: 2 per pool, 1 per node, the router's.
    assert_eq!(m.vms.len(), 2);
    assert_eq!(m.deployments.len(), 3);
    assert_eq!(m.services.len(), 2 + 4 + 1);
    assert_eq!(m.config_maps.len(), 1);
    assert_eq!(m.claims.len(), 1);

    // Unikernel nodes: kernel boot from the container disk, memory from the cluster file, the
    // node id on the kernel command line, the token left for apply.sh.
    for (i, vm) in m.vms.iter().enumerate() {
        let id = format!("stable-{i}");
        assert_eq!(
            vm.metadata.name.as_deref(),
            Some(format!("janus-shop-{id}").as_str())
        );
        assert_eq!(vm.spec.run_strategy, RunStrategy::Always);
        let d = &vm.spec.template.spec.domain;
        assert_eq!(d.memory.guest, Quantity("64Mi".into()));
        assert_eq!(d.resources.requests["memory"], Quantity("64Mi".into()));
        let kb = &d.firmware.kernel_boot;
        assert_eq!(kb.container.kernel_path, "/boot/janus-samples-faulty.img");
        assert!(
            kb.container
                .image
                .ends_with("/janus-samples-faulty-uk:0.1.0"),
            "{}",
            kb.container.image
        );
        let words: Vec<&str> = kb.kernel_args.split(' ').collect();
        assert!(
            words.contains(&format!("janus.node={id}").as_str()),
            "{words:?}"
        );
        assert!(words.contains(&"ip=dhcp"), "{words:?}");
        assert!(
            words.contains(&"janus.token=@JANUS_NODE_TOKEN@"),
            "{words:?}"
        );
        let ports: Vec<i32> = d.devices.interfaces[0]
            .ports
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, [80, 81]);
        assert_eq!(
            labels(&vm.spec.template.metadata)["janus.dev/pool"],
            "stable"
        );
    }

    // Every node and pool Service selects pods that exist: a node Service exactly one, a pool
    // Service every node of its pool; every Service carries its pool label.
    let pods = pod_labels(&m);
    for s in &m.services {
        let name = s.metadata.name.clone().unwrap_or_default();
        let sel = s
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .expect("selector");
        let n = pods.iter().filter(|p| matches(&sel, p)).count();
        let expected = match name.as_str() {
            "janus-shop-stable" | "janus-shop-debug" => 2,
            _ => 1,
        };
        assert_eq!(n, expected, "Service {name} selects {n} pod templates");
        if name != "janus-shop" {
            let pool = labels(&s.metadata)["janus.dev/pool"].clone();
            assert!(name.contains(&pool), "{name}: pool label {pool}");
            // A VM's Service targets the guest's ports, a pod's its container's named ports.
            let targets: Vec<String> = s
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .unwrap_or_default()
                .iter()
                .filter_map(|p| {
                    p.target_port.as_ref().map(|t| match t {
                        IntOrString::Int(i) => i.to_string(),
                        IntOrString::String(s) => s.clone(),
                    })
                })
                .collect();
            let expected = if pool == "stable" {
                ["80", "81"]
            } else {
                ["http", "admin"]
            };
            assert_eq!(targets, expected, "{name}");
        }
    }

    // No token is written anywhere: every *TOKEN* variable is a reference to the Secret.
    let mut token_refs = 0;
    for d in &m.deployments {
        let pod = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec");
        for c in &pod.containers {
            for e in c.env.clone().unwrap_or_default() {
                if e.name.contains("TOKEN") {
                    assert!(e.value.is_none(), "{} has an inline value", e.name);
                    let r = e
                        .value_from
                        .and_then(|v| v.secret_key_ref)
                        .expect("secretKeyRef");
                    assert_eq!(r.name, "janus-shop-admin");
                    token_refs += 1;
                }
            }
        }
    }
    assert_eq!(
        token_refs,
        2 + 2,
        "two debug nodes and the router's two tokens"
    );

    // The router: its ConfigMap and the environment Kubernetes would give its pod load in the real
    // lb-router; left unexpanded (no Services yet), the node list is refused.
    let router = m
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("janus-shop-router"))
        .expect("router Deployment");
    let pod = router
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    assert_eq!(pod.enable_service_links, Some(true));
    let toml_text = m.config_maps[0]
        .data
        .as_ref()
        .and_then(|d| d.get("router.toml").cloned())
        .expect("router.toml");
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        toml_text.replace("/var/lib/janus", dir.to_str().expect("utf8")),
    )
    .expect("write config");
    let links = service_env(&m);
    let mut env = links.clone();
    let mut unexpanded = links.clone();
    for e in pod.containers[0].env.clone().unwrap_or_default() {
        let value = match (e.value, e.value_from) {
            (Some(v), _) => v,
            (None, Some(_)) => format!("secret-{}", e.name.len()),
            _ => String::new(),
        };
        unexpanded.insert(e.name.clone(), value.clone());
        env.insert(e.name, expand(&value, &links));
    }
    let nodes = &env["JANUS_ROUTER_NODES"];
    assert!(!nodes.contains("$("), "{nodes}");
    assert_eq!(nodes.matches("pool = \"stable\"").count(), 2, "{nodes}");
    assert_eq!(nodes.matches("pool = \"debug\"").count(), 2, "{nodes}");
    let bin = router_bin();
    let ok = router_check(&bin, &config, &env);
    assert!(
        ok.status.success(),
        "lb-router --check: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = router_check(&bin, &config, &unexpanded);
    assert!(
        !refused.status.success(),
        "unexpanded $(…) addresses must not load"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nodes"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The Containerfiles: FROM scratch with the image for KubeVirt's kernel boot.
    let uk = std::fs::read_to_string(out.join("images/uk/Containerfile")).expect("Containerfile");
    assert!(uk.contains("FROM scratch"), "{uk}");
    assert!(uk.contains("/boot/janus-samples-faulty.img"), "{uk}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in kubectl: records every call, answers `get secret` with the token `$FAKE_TOKEN`, saves
/// what `apply -f -` reads.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"get secret"*"-o"*) printf '%s' "$FAKE_TOKEN" | base64 ;;
  *"get secret"*) echo "secret/x" ;;
  *"apply -f -"*) cat >> "$FAKE_APPLIED" ;;
esac
"#;

fn run_apply(out: &Path, dir: &Path, token: &str) -> Output {
    let kubectl = dir.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).expect("write fake kubectl");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Command::new(out.join("apply.sh"))
        .args(["-n", "prod"])
        .env("KUBECTL", &kubectl)
        .env("FAKE_LOG", dir.join("calls.log"))
        .env("FAKE_APPLIED", dir.join("applied.yaml"))
        .env("FAKE_TOKEN", token)
        .output()
        .expect("apply.sh runs")
}

/// Runs `apply.sh` (it must succeed) and returns the VirtualMachines it applied.
fn applied_vms(out: &Path, dir: &Path, token: &str) -> Vec<VirtualMachine> {
    let o = run_apply(out, dir, token);
    assert!(
        o.status.success(),
        "apply.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let applied = std::fs::read_to_string(dir.join("applied.yaml")).expect("applied");
    serde_yaml::Deserializer::from_str(&applied)
        .map(|d| typed(&Value::deserialize(d).expect("doc")))
        .collect()
}

#[test]
fn apply_script_puts_the_node_token_into_the_virtual_machines_only() {
    let (dir, out) = emitted("apply", "kubernetes");
    let token = "0123456789abcdef0123456789abcdef";
    let vms = applied_vms(&out, &dir, token);
    let calls = std::fs::read_to_string(dir.join("calls.log")).expect("calls");
    assert!(calls.lines().all(|l| l.starts_with("-n prod ")), "{calls}");
    assert!(
        calls.contains(&format!("apply -f {}", out.display())),
        "{calls}"
    );
    assert_eq!(vms.len(), 2);
    for vm in &vms {
        let args = &vm
            .spec
            .template
            .spec
            .domain
            .firmware
            .kernel_boot
            .kernel_args;
        assert!(args.contains(&format!("janus.token={token}")), "{args}");
    }
    // The token is in no emitted file.
    for f in walk(&out) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains(token), "{} holds the token", f.display());
    }
    // A token the kernel command line cannot carry is refused before anything is applied.
    let _ = std::fs::remove_file(dir.join("calls.log"));
    let o = run_apply(&out, &dir, "short token");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("node-token"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default();
    assert!(!calls.contains("apply"), "{calls}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// The Nomad job specification (JSON API form), the fields Janus emits; unknown fields refused.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    #[serde(rename = "Job")]
    job: Job,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Job {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    r#type: String,
    datacenters: Vec<String>,
    meta: BTreeMap<String, String>,
    task_groups: Vec<TaskGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct TaskGroup {
    name: String,
    count: u32,
    networks: Vec<NetworkResource>,
    restart_policy: RestartPolicy,
    #[serde(default)]
    ephemeral_disk: Option<EphemeralDisk>,
    services: Vec<NomadService>,
    tasks: Vec<Task>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct NetworkResource {
    mode: String,
    #[serde(default)]
    dynamic_ports: Vec<NomadPort>,
    #[serde(default)]
    reserved_ports: Vec<NomadPort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct NomadPort {
    label: String,
    #[serde(default)]
    value: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct RestartPolicy {
    attempts: u32,
    interval: u64,
    delay: u64,
    mode: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct EphemeralDisk {
    sticky: bool,
    migrate: bool,
    #[serde(rename = "SizeMB")]
    size_mb: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct NomadService {
    name: String,
    provider: String,
    port_label: String,
    tags: Vec<String>,
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Check {
    name: String,
    r#type: String,
    port_label: String,
    interval: u64,
    timeout: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Task {
    name: String,
    driver: String,
    config: BTreeMap<String, Value>,
    artifacts: Vec<Artifact>,
    templates: Vec<Template>,
    resources: TaskResources,
    #[serde(default)]
    kill_timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Artifact {
    getter_source: String,
    getter_mode: String,
    relative_dest: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Template {
    embedded_tmpl: String,
    dest_path: String,
    change_mode: String,
    #[serde(default)]
    change_signal: Option<String>,
    #[serde(default)]
    envvars: Option<bool>,
    #[serde(default)]
    perms: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskResources {
    #[serde(rename = "CPU")]
    cpu: u32,
    #[serde(rename = "MemoryMB")]
    memory_mb: u32,
}

fn load_job(file: &Path, out: &Path, flags: &[&str]) -> Job {
    emit("nomad", file, out, flags);
    let text = std::fs::read_to_string(out.join("janus-shop.nomad.json")).expect("job file");
    let parsed: JobFile =
        serde_json::from_str(&text).expect("the job parses into the typed structs");
    parsed.job
}

#[test]
fn nomad_job_has_the_drivers_counts_ports_and_service_tags() {
    let dir = temp_dir("nomad");
    let file = cluster_file(&dir, "shop");
    let job = load_job(&file, &dir.join("out"), &[]);
    assert_eq!(
        (job.id.as_str(), job.name.as_str(), job.r#type.as_str()),
        ("janus-shop", "janus-shop", "service")
    );
    assert_eq!(job.datacenters, ["*"]);
    assert_eq!(job.meta["janus.cluster"], "shop");
    let groups: Vec<(&str, u32, &str)> = job
        .task_groups
        .iter()
        .map(|g| (g.name.as_str(), g.count, g.tasks[0].driver.as_str()))
        .collect();
    assert_eq!(
        groups,
        [
            ("stable", 2, "qemu"),
            ("debug", 2, "exec"),
            ("router", 1, "exec")
        ]
    );
    for g in &job.task_groups {
        assert!(g.tasks.len() == 1 && g.services.len() == 1, "{}", g.name);
        let s = &g.services[0];
        assert_eq!(
            (s.provider.as_str(), s.port_label.as_str()),
            ("nomad", "http")
        );
        assert_eq!(
            (s.checks[0].name.as_str(), s.checks[0].r#type.as_str()),
            ("http-tcp", "tcp")
        );
        assert_eq!(s.checks[0].port_label, "http");
        assert!(s.checks[0].timeout < s.checks[0].interval);
        assert_eq!(
            g.restart_policy.delay, 200_000_000,
            "backoff_initial_ms in ns"
        );
        assert!(g.restart_policy.attempts > 0 && g.restart_policy.interval > 0);
        assert_eq!(g.restart_policy.mode, "delay");
        let t = &g.tasks[0];
        assert_eq!(t.name, if g.name == "router" { "router" } else { "node" });
        assert!(
            t.resources.cpu > 0 && t.resources.memory_mb >= 128,
            "{}",
            g.name
        );
        // Tokens only through the Nomad Variable, into secrets/.
        for tmpl in t
            .templates
            .iter()
            .filter(|t| t.dest_path.starts_with("secrets/"))
        {
            assert!(
                tmpl.embedded_tmpl
                    .contains("nomadVar \"nomad/jobs/janus-shop\""),
                "{}",
                tmpl.embedded_tmpl
            );
            assert_eq!(tmpl.perms.as_deref(), Some("0400"));
            assert_eq!(tmpl.change_mode, "restart");
        }
        for a in &t.artifacts {
            assert_eq!(a.getter_mode, "file");
            assert!(
                a.getter_source
                    .starts_with("https://artifacts.example.com/janus/0.1.0/"),
                "{}",
                a.getter_source
            );
            assert!(a.relative_dest.starts_with("local/"));
        }
        if g.name != "router" {
            let n = &g.networks[0];
            assert_eq!(n.mode, "host");
            let labels: Vec<&str> = n.dynamic_ports.iter().map(|p| p.label.as_str()).collect();
            assert_eq!(labels, ["http", "admin"]);
            assert_eq!(s.name, format!("janus-shop-{}", g.name));
            assert!(s.tags.contains(&format!("pool={}", g.name)), "{:?}", s.tags);
            assert!(
                s.tags
                    .contains(&format!("node={}-${{NOMAD_ALLOC_INDEX}}", g.name)),
                "{:?}",
                s.tags
            );
            assert!(
                s.tags.contains(&"admin=${NOMAD_ADDR_admin}".to_string()),
                "{:?}",
                s.tags
            );
        }
    }
    // The unikernel task: the qemu driver's config, 128 MB although the cluster asks for 64.
    let uk = &job.task_groups[0].tasks[0];
    assert_eq!(uk.config["image_path"], "local/janus-samples-faulty.img");
    assert_eq!(uk.config["drive_interface"], "none");
    assert!(
        !uk.config.contains_key("machine_type"),
        "pc is the driver's default, which Nomad 1.x needs"
    );
    assert_eq!(uk.config["accelerator"], "kvm");
    assert_eq!(uk.resources.memory_mb, 128);
    assert_eq!(uk.kill_timeout, Some(5_000_000_000));
    let args: Vec<&str> = uk.config["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let after = |flag: &str| {
        args.iter()
            .skip_while(|a| **a != flag)
            .nth(1)
            .copied()
            .unwrap_or("")
    };
    assert_eq!(
        after("-kernel"),
        "${NOMAD_TASK_DIR}/janus-samples-faulty.img"
    );
    assert_eq!(
        after("-fw_cfg"),
        "name=opt/janus/token,file=${NOMAD_SECRETS_DIR}/admin-token"
    );
    assert!(after("-append").contains("janus.node=stable-${NOMAD_ALLOC_INDEX}"));
    assert!(after("-netdev").contains("hostfwd=tcp:${NOMAD_IP_http}:${NOMAD_PORT_http}-:80"));
    // The debug task: the token from the Variable into its environment.
    let dbg = &job.task_groups[1].tasks[0];
    assert_eq!(
        dbg.config["command"],
        "${NOMAD_TASK_DIR}/janus-samples-faulty-unix"
    );
    assert_eq!(dbg.templates[0].envvars, Some(true));
    assert!(
        dbg.templates[0]
            .embedded_tmpl
            .starts_with("JANUS_ADMIN_TOKEN=")
    );
    // The router: static port from the cluster file, sticky disk for the fault store, config
    // re-rendered with SIGHUP from both pools' services.
    let router = &job.task_groups[2];
    assert_eq!(router.networks[0].reserved_ports[0].label, "http");
    assert_eq!(router.networks[0].reserved_ports[0].value, Some(8080));
    let disk = router.ephemeral_disk.as_ref().expect("ephemeral disk");
    assert!(disk.sticky && disk.migrate && disk.size_mb > 0);
    let tmpl = router.tasks[0]
        .templates
        .iter()
        .find(|t| t.dest_path == "local/router.toml")
        .expect("router.toml");
    assert_eq!(
        (tmpl.change_mode.as_str(), tmpl.change_signal.as_deref()),
        ("signal", Some("SIGHUP"))
    );
    for pool in ["stable", "debug"] {
        assert!(
            tmpl.embedded_tmpl
                .contains(&format!("range nomadService \"janus-shop-{pool}\""))
        );
        assert!(tmpl.embedded_tmpl.contains(&format!("pool = \"{pool}\"")));
    }
    // Its settings part (before the node templates) is a router config the real router loads.
    let settings = tmpl
        .embedded_tmpl
        .split("{{- range")
        .next()
        .expect("settings");
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        settings.replace(
            "{{ env `NOMAD_ALLOC_DIR` }}/data",
            dir.to_str().expect("utf8"),
        ),
    )
    .expect("write");
    let env = HashMap::from([
        (
            "JANUS_ROUTER_ADMIN__TOKEN".to_string(),
            "r0uter-token".to_string(),
        ),
        (
            "JANUS_ROUTER_UPSTREAM__ADMIN_TOKEN".to_string(),
            "n0de-token".to_string(),
        ),
    ]);
    let o = router_check(&router_bin(), &config, &env);
    assert!(
        o.status.success(),
        "lb-router --check: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The unikernel image of the faulty sample (built once, release).
fn uk_image() -> PathBuf {
    janus::up::ensure_qemu().expect("qemu");
    janus::build(
        &janus::janus_home().join("samples/faulty"),
        janus::Flavor::Uk,
    )
    .expect("build the unikernel image")
    .path
}

/// QEMU with `args`, its console (stdout) into `console`.
fn boot(args: &[String], console: &Path) -> std::process::Child {
    Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(console).expect("console"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu starts")
}

fn admin_health(admin: std::net::SocketAddr, token: &str) -> anyhow::Result<janus::client::Reply> {
    let raw = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    janus_integration::client::send_raw(
        admin,
        raw.as_bytes(),
        std::time::Duration::from_millis(500),
    )
}

/// Polls the admin API until `/health` answers 200 with `token` (QEMU must not exit meanwhile).
fn wait_healthy(
    qemu: &mut std::process::Child,
    admin: std::net::SocketAddr,
    token: &str,
    console: &Path,
) -> janus::client::Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(r) = admin_health(admin, token)
            && r.status == 200
        {
            return r;
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            panic!(
                "QEMU exited ({status}): {}",
                std::fs::read_to_string(console).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /health answer: {}",
            std::fs::read_to_string(console).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The job's qemu arguments behind the driver's own prefix, Nomad's variables filled in as a client
/// would, on both machines the job can ask for: `pc` (the only one before Nomad 2.0) and `microvm`
/// (`machine_type`, Nomad 2.0+). The unikernel boots, serves, and its admin API takes the token from
/// the fw_cfg file in the secrets directory. (Nomad 1.x also appends `-cpu host` with `accelerator =
/// "kvm"`; it is left out: this machine's nested KVM refuses it, an MSR the host CPU model sets.)
#[test]
fn nomad_qemu_arguments_boot_the_unikernel_on_pc_and_microvm() {
    let image = uk_image();
    for (machine, flags) in [
        ("pc", &[][..]),
        ("microvm", &["--nomad-machine", "microvm"][..]),
    ] {
        let dir = temp_dir(&format!("nomad-qemu-{machine}"));
        let file = cluster_file(&dir, "shop");
        let job = load_job(&file, &dir.join("out"), flags);
        let task = &job.task_groups[0].tasks[0];
        let machine_type = task
            .config
            .get("machine_type")
            .and_then(Value::as_str)
            .unwrap_or("pc");
        assert!(machine_type.starts_with(machine), "{machine_type}");
        let task_dir = dir.join("local");
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&task_dir).expect("mkdir");
        std::fs::create_dir_all(&secrets).expect("mkdir");
        let img = task_dir.join("janus-samples-faulty.img");
        std::fs::copy(&image, &img).expect("copy image");
        let token = "n0de-t0ken-for-the-test";
        std::fs::write(secrets.join("admin-token"), token).expect("token");
        let http = janus::up::free_addr().expect("port");
        let admin = janus::up::free_addr().expect("port");
        let vars = [
            ("${NOMAD_IP_http}", http.ip().to_string()),
            ("${NOMAD_PORT_http}", http.port().to_string()),
            ("${NOMAD_IP_admin}", admin.ip().to_string()),
            ("${NOMAD_PORT_admin}", admin.port().to_string()),
            ("${NOMAD_TASK_DIR}", task_dir.display().to_string()),
            ("${NOMAD_SECRETS_DIR}", secrets.display().to_string()),
            ("${NOMAD_ALLOC_INDEX}", "1".to_string()),
        ];
        let kvm = janus::flavor::uk::kvm_available();
        // Nomad's drivers/qemu/driver.go: machine, name, memory, the image as a drive, no display.
        let mut args: Vec<String> = vec![
            "-machine".into(),
            format!(
                "type={machine_type},accel={}",
                if kvm { "kvm" } else { "tcg" }
            ),
            "-name".into(),
            "janus-samples-faulty.img".into(),
            "-m".into(),
            format!("{}M", task.resources.memory_mb),
            "-drive".into(),
            format!(
                "file={},if={},id=image0",
                img.display(),
                task.config["drive_interface"]
                    .as_str()
                    .expect("drive_interface")
            ),
            "-nographic".into(),
        ];
        for a in task.config["args"].as_array().expect("args") {
            let mut a = a.as_str().expect("string arg").to_string();
            for (k, v) in &vars {
                a = a.replace(k, v);
            }
            args.push(a);
        }
        if kvm {
            args.push("-enable-kvm".into());
        }
        let console = dir.join("console.log");
        let mut qemu = boot(&args, &console);
        let health = wait_healthy(&mut qemu, admin, token, &console);
        let body = health.text();
        assert!(body.contains("\"node\":\"stable-1\""), "{body}");
        let reply = janus_integration::client::send_raw(
            http,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            std::time::Duration::from_secs(2),
        )
        .expect("service answers");
        assert!(reply.status < 500, "{}", reply.status);
        assert_eq!(
            admin_health(admin, "wrong").expect("admin answers").status,
            401
        );
        let _ = qemu.kill();
        let _ = qemu.wait();
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let transport = if machine == "pc" {
            "virtio-net pci"
        } else {
            "virtio-net virtio-mmio"
        };
        assert!(log.contains(transport), "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// What KubeVirt gives the VirtualMachine as `apply.sh` renders it: the q35 machine, a modern
/// virtio-net-pci NIC, an address by DHCP, the token on the kernel command line (no fw_cfg) and no
/// isa-debug-exit. The unikernel boots and serves; a panic halts it (QEMU keeps running, the service
/// port stops answering: what the liveness probe sees) with the report on the console.
#[test]
fn kubevirt_shaped_vm_boots_with_the_rendered_kernel_args_and_halts_on_a_panic() {
    let image = uk_image();
    let (dir, out) = emitted("kubevirt-qemu", "kubernetes");
    let token = "kubev1rt-node-t0ken-0123456789";
    let vm = applied_vms(&out, &dir, token)
        .into_iter()
        .next()
        .expect("a VirtualMachine");
    let domain = &vm.spec.template.spec.domain;
    assert_eq!(domain.machine.r#type, "q35");
    let memory = domain.memory.guest.0.trim_end_matches("Mi").to_string();
    let http = janus::up::free_addr().expect("port");
    let admin = janus::up::free_addr().expect("port");
    let accel = if janus::flavor::uk::kvm_available() {
        "kvm"
    } else {
        "tcg"
    };
    let args: Vec<String> = [
        "-M",
        "q35",
        "-accel",
        accel,
        "-m",
        &memory,
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:{http}-:80,hostfwd=tcp:{admin}-:81"),
        "-device",
        "virtio-net-pci,netdev=n0,disable-legacy=on",
        "-kernel",
        image.to_str().expect("utf8"),
        "-append",
        &domain.firmware.kernel_boot.kernel_args,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let console = dir.join("console.log");
    let mut qemu = boot(&args, &console);
    let health = wait_healthy(&mut qemu, admin, token, &console);
    assert!(
        health.text().contains("\"node\":\"stable-0\""),
        "{}",
        health.text()
    );
    // Bug 1 of the faulty sample: a panic.
    let _ = janus_integration::client::send_raw(
        http,
        b"GET /div?a=1&b=0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        std::time::Duration::from_secs(2),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("JANUS-PANIC")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no panic report on the console"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        qemu.try_wait().expect("wait").is_none(),
        "without isa-debug-exit QEMU does not exit"
    );
    let after = janus_integration::client::send_raw(
        http,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        std::time::Duration::from_secs(1),
    );
    assert!(
        after.is_err(),
        "a halted guest answered: {:?}",
        after.map(|r| r.status)
    );
    assert!(admin_health(admin, token).is_err());
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `stable.flavor = "unix"` (machines without virtualization): the stable pool is process nodes
/// everywhere, Deployments on Kubernetes (no VirtualMachine, no token rendering) and exec on Nomad.
#[test]
fn process_stable_nodes_need_no_virtualization() {
    let dir = temp_dir("unix-stable");
    let file = cluster_file(&dir, "shop");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace("[stable]\n", "[stable]\nflavor = \"unix\"\n"),
    )
    .expect("write");
    // Emitted over a directory that held a unikernel cluster: its VirtualMachines go.
    let out = dir.join("k8s");
    emit(
        "kubernetes",
        &cluster_file(&temp_dir("uk-before"), "shop"),
        &out,
        &[],
    );
    assert!(out.join("vms/stable.yaml.in").exists());
    emit("kubernetes", &file, &out, &[]);
    assert!(!out.join("vms/stable.yaml.in").exists());
    assert!(!out.join("images/uk/Containerfile").exists());
    let mut services = 0;
    let mut stable_pods = 0;
    for f in walk(&out)
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "yaml"))
    {
        for doc in documents(f) {
            assert_ne!(doc["kind"], "VirtualMachine");
            if doc["kind"] == "Service" && doc["metadata"]["labels"]["janus.dev/pool"] == "stable" {
                let s: Service = typed(&doc);
                let ports = s.spec.and_then(|s| s.ports).unwrap_or_default();
                assert!(
                    ports
                        .iter()
                        .all(|p| matches!(&p.target_port, Some(IntOrString::String(_))))
                );
                services += 1;
            }
            if doc["kind"] == "Deployment" {
                let d: Deployment = typed(&doc);
                let l = d
                    .spec
                    .and_then(|s| s.template.metadata)
                    .map(|m| labels(&m))
                    .unwrap_or_default();
                stable_pods +=
                    usize::from(l.get("janus.dev/pool").map(String::as_str) == Some("stable"));
            }
        }
    }
    assert_eq!((services, stable_pods), (1 + 2, 2));
    let job = load_job(&file, &dir.join("nomad"), &[]);
    assert_eq!(job.task_groups[0].name, "stable");
    assert_eq!(job.task_groups[0].tasks[0].driver, "exec");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_refused_with_the_problem_named() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let outs = out.to_str().expect("utf8");
    let check = |o: Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "accepted; stderr: {err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    };
    let kubernetes = |file: &Path| {
        deploy(&[
            "--emit",
            "kubernetes",
            outs,
            "-f",
            file.to_str().expect("utf8"),
        ])
    };
    check(kubernetes(&dir.join("nope.toml")), "nope.toml not found");
    check(
        deploy(&["--emit", "swarm", outs]),
        "invalid value 'swarm' for '--emit <KIND>'",
    );
    check(deploy(&["--emit", "nomad"]), "<DIR>");
    let file = cluster_file(&dir, "shop");
    let f = file.to_str().expect("utf8");
    // An output "directory" that is a file, or lies under one.
    check(
        deploy(&["--emit", "kubernetes", f, "-f", f]),
        "is not a directory",
    );
    let under = file.join("sub");
    check(
        deploy(&["--emit", "nomad", under.to_str().expect("utf8"), "-f", f]),
        "cannot create output directory",
    );
    // Names Kubernetes cannot take, or that would collide with the router's variables.
    for (name, needle) in [
        ("Shop_1", "lowercase letters"),
        ("router-a", "JANUS_ROUTER_"),
    ] {
        let dir2 = temp_dir(&format!("bad-{name}"));
        let file = cluster_file(&dir2, name);
        check(kubernetes(&file), needle);
        let _ = std::fs::remove_dir_all(&dir2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! The stable nodes of a cluster whose engine is libvirt: persistent domains on the engine's
//! network.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::procs::which;
use crate::cluster::ClusterFile;
use crate::flavor::uk::{Accel, Machine};
use crate::secret::random_token;
use crate::supervisor::{Plan, ProcSpec, Role};

/// A libvirt network on one connection URI: (URI, network name).
type UriNetwork = (String, String);

/// The stable nodes of a libvirt-engine cluster: one persistent domain each, spread over the URIs in
/// turn, on the engine's network (created when missing) with addresses from its managed range. All of
/// them share one admin token (the router admits the nodes it discovers with it), held in a 0600
/// file QEMU reads as fw_cfg. Returns the specs and the networks this call created.
pub(super) fn libvirt_stable_nodes(
    cluster: &ClusterFile,
    dir: &Path,
    uk: &crate::Artifact,
    svc_name: &str,
    secret_dir: &Path,
) -> anyhow::Result<(Vec<ProcSpec>, Vec<UriNetwork>)> {
    use crate::libvirt::{self, DomainParams, DomainSpec, NodeMeta};
    if !which("virsh") {
        bail!(
            "engine.kind = \"libvirt\" needs virsh: install libvirt (scripts/install-deps libvirt-daemon-system)"
        );
    }
    let engine = &cluster.engine;
    let network = engine.network_name(&cluster.name);
    let token = random_token()?;
    let token_file = secret_dir.join("stable-pool.token");
    crate::secret::write_private(&token_file, token.as_bytes())?;
    // The image the domains boot, kept apart from the build output: a rebuild does not change the
    // kernel of a defined domain under it.
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let image = images.join(
        uk.path
            .file_name()
            .context("the uk image has no file name")?,
    );
    std::fs::copy(&uk.path, &image)
        .with_context(|| format!("cannot copy {} to {}", uk.path.display(), image.display()))?;
    let consoles = dir.join("consoles");
    std::fs::create_dir_all(&consoles)?;
    let domains = dir.join("domains");
    std::fs::create_dir_all(&domains)?;
    let version = uk
        .manifest
        .get("version")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut created = Vec::new();
    let earlier: Vec<UriNetwork> = std::fs::read(dir.join("plan.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Plan>(&b).ok())
        .map(|p| p.libvirt_networks)
        .unwrap_or_default();
    // Per URI: (uri, gateway, prefix, node addresses, image and token file paths on that host).
    let mut per_uri: Vec<(String, Ipv4Addr, u8, Vec<Ipv4Addr>, PathBuf, PathBuf)> = Vec::new();
    let count = cluster.stable.count as usize;
    for (u, uri) in engine.uri.iter().enumerate() {
        let here = (count + engine.uri.len() - 1 - u) / engine.uri.len();
        if here == 0 {
            continue;
        }
        let (gw, prefix, made) = libvirt::ensure_network(uri, &network, engine.subnet()?)
            .with_context(|| format!("libvirt network {network} on {uri}"))?;
        // Created by this call, or by an earlier `janus up` of this cluster that never came down.
        let key = (uri.clone(), network.clone());
        if made || earlier.contains(&key) {
            created.push(key);
        }
        // Hosts may share one L2 segment and range (a bridged network): addresses given on one URI
        // are taken on the others too.
        let mut used = libvirt::used_addresses(uri, &cluster.name)?;
        for (_, _, _, ips, _, _) in &per_uri {
            used.extend_from_slice(ips);
        }
        let ips = libvirt::allocate(gw, prefix, &used, here)?;
        // The image and the token reach each host through libvirt's storage API (the Janus pool).
        let [image_vol, token_vol] = libvirt::volumes(&cluster.name);
        let host_image = libvirt::upload(uri, &image_vol, &image)
            .with_context(|| format!("uploading the image to {uri}"))?;
        let host_token = libvirt::upload(uri, &token_vol, &token_file)
            .with_context(|| format!("uploading the token file to {uri}"))?;
        per_uri.push((uri.clone(), gw, prefix, ips, host_image, host_token));
    }
    let mut specs = Vec::new();
    for i in 0..count {
        let slot = i % per_uri.len();
        let (uri, gw, prefix, ips, host_image, host_token) = &per_uri[slot];
        let ip = ips[i / per_uri.len()];
        let id = format!("stable-{i}");
        let name = format!("janus-{}-{id}", cluster.name);
        let virt_type = match cluster.stable.accel.as_str() {
            "tcg" => "qemu",
            "kvm" => "kvm",
            _ if !libvirt::is_local(uri) || crate::flavor::uk::kvm_available() => "kvm",
            _ => "qemu",
        };
        let meta = NodeMeta {
            cluster: cluster.name.clone(),
            node: id.clone(),
            pool: "stable".into(),
            service: svc_name.to_string(),
            version: version.clone(),
            addr: SocketAddr::from((ip, crate::flavor::uk::GUEST_SERVICE_PORT)),
            admin: SocketAddr::from((ip, crate::flavor::uk::GUEST_ADMIN_PORT)),
        };
        let opts = crate::flavor::uk::UkRunOpts {
            listen: meta.addr,
            admin: Some(meta.admin),
            admin_token: token.clone(),
            node_id: id.clone(),
            upstreams: Vec::new(),
            config: Vec::new(),
            memory_mib: cluster.stable.memory_mib,
            machine: Machine::Microvm,
            accel: Accel::Auto,
            log_level: None,
            secret_dir: secret_dir.to_path_buf(),
            gdbstub: None,
        };
        // The local engine's line, with the network's address instead of user networking's, and
        // without the per-boot seed (a persistent domain would boot with the same one every time).
        let cmdline: Vec<String> = crate::flavor::uk::kernel_cmdline(&opts)?
            .split(' ')
            .filter(|w| {
                !w.starts_with("janus.seed=") && !w.starts_with("ip=") && !w.starts_with("gw=")
            })
            .map(str::to_string)
            .chain([format!("ip={ip}/{prefix}"), format!("gw={gw}")])
            .collect();
        // The console file is on the domain's host: in the run directory for a local URI (the
        // supervisor follows it), in libvirt's log directory on a remote host.
        let console = if libvirt::is_local(uri) {
            consoles.join(format!("{id}.console"))
        } else {
            PathBuf::from(format!("/var/log/libvirt/qemu/{name}.console"))
        };
        // A domain of this name left by a run whose supervisor died goes first.
        libvirt::remove_domain(uri, &name)?;
        let uuid = libvirt::random_uuid()?;
        let mac = libvirt::random_mac()?;
        let xml = libvirt::domain_xml(&DomainParams {
            name: &name,
            uuid: &uuid,
            mac: &mac,
            meta: &meta,
            virt_type,
            memory_mib: cluster.stable.memory_mib,
            image: host_image,
            cmdline: &cmdline.join(" "),
            network: &network,
            console: &console,
            token_file: host_token,
        })?;
        let xml_file = domains.join(format!("{name}.xml"));
        std::fs::write(&xml_file, xml)?;
        specs.push(ProcSpec {
            id,
            role: Role::Stable,
            kind: "uk".into(),
            program: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            args: Vec::new(),
            env: Vec::new(),
            listen: meta.addr,
            admin: meta.admin,
            token: token.clone(),
            listen_on_stdin: false,
            domain: Some(DomainSpec {
                uri: uri.clone(),
                name,
                xml_file,
                console,
            }),
        });
    }
    Ok((specs, created))
}

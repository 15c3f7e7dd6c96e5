//! `[discovery] kind = "libvirt"`: nodes from libvirt domains.
//!
//! For every configured connection URI the router runs `virsh -c URI event --loop --event lifecycle`
//! (libvirt's own client, so every URI form and authentication method libvirt supports works,
//! `qemu+ssh://host/system` included, and the router links no C library) and lists the running
//! domains (`virsh list --name`) at start and every `resync_ms` (a `Started`/`Resumed` event reads
//! that one domain's metadata: no re-listing of a whole host per event). A
//! domain is a node when its `<metadata>` holds a Janus node element ([`METADATA_NS`]): cluster,
//! node id, pool, service and admin addresses. A new node joins the pools only after its `/health`
//! answered `"status":"ok"`; a `Stopped` event (or a re-listing without it) removes it at once. Joins
//! and leaves go through [`Router::set_discovered`], the reload path: unchanged nodes keep their
//! state and connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::ids::{AdminAddr, NodeId, Pool, UpstreamAddr};
use crate::pool::Node;
use crate::router::Router;

/// The XML namespace of the Janus node element in a domain's `<metadata>`.
pub const METADATA_NS: &str = "https://janus.invalid/xmlns/node/1";

/// A Janus node element of a domain's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    pub cluster: String,
    pub node: String,
    pub pool: String,
    pub service: String,
    pub version: String,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

/// Parses `<janus:node cluster=".." node=".." pool=".." service=".." version=".." addr="IP:PORT"
/// admin="IP:PORT"/>` (the attributes of the first element; any prefix). `None` if one is missing.
pub fn parse_metadata(xml: &str) -> Option<NodeMeta> {
    let start = xml.find('<')?;
    let rest = &xml[start + 1..];
    let tag = &rest[..rest.find('>')?];
    let attrs = parse_attrs(tag);
    let get = |k: &str| attrs.get(k).cloned();
    Some(NodeMeta {
        cluster: get("cluster")?,
        node: get("node")?,
        pool: get("pool")?,
        service: get("service").unwrap_or_default(),
        version: get("version").unwrap_or_default(),
        addr: get("addr")?.parse().ok()?,
        admin: get("admin")?.parse().ok()?,
    })
}

fn parse_attrs(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut s = tag;
    while let Some(eq) = s.find('=') {
        let name = s[..eq]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string();
        let after = s[eq + 1..].trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            break;
        };
        let body = &after[1..];
        let Some(end) = body.find(quote) else { break };
        out.insert(name, unescape(&body[..end]));
        s = &body[end + 1..];
    }
    out
}

fn unescape(v: &str) -> String {
    v.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// One lifecycle event line of `virsh event`: (domain, event word), e.g. ("janus-c-stable-0",
/// "Stopped").
pub fn parse_event(line: &str) -> Option<(String, String)> {
    let rest = &line[line.find("for domain '")? + "for domain '".len()..];
    let end = rest.find("':")?;
    let event = rest[end + 2..].split_whitespace().next()?.to_string();
    Some((rest[..end].to_string(), event))
}

/// Whether a lifecycle event word means the domain no longer runs.
fn is_down(event: &str) -> bool {
    matches!(event, "Stopped" | "Crashed" | "Shutdown" | "Suspended")
}

enum Msg {
    /// Re-list this URI.
    Resync(usize),
    /// A domain of this URI stopped.
    Down(usize, String),
    /// A domain of this URI started or resumed.
    Up(usize, String),
    /// A domain passed (true) or gave up (false) its join health check.
    Joined(usize, String, NodeConfig, bool),
}

async fn virsh(uri: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "virsh -c {uri} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Janus nodes running on `uri`: domain name -> metadata.
async fn list(uri: &str, cluster: &str) -> Result<HashMap<String, NodeMeta>, String> {
    let names = virsh(uri, &["list", "--name"]).await?;
    let mut out = HashMap::new();
    for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        // A domain without Janus metadata makes virsh fail: not ours.
        let Ok(xml) = virsh(uri, &["metadata", name, "--uri", METADATA_NS]).await else {
            continue;
        };
        if let Some(meta) = parse_metadata(&xml)
            && (cluster.is_empty() || meta.cluster == cluster)
        {
            out.insert(name.to_string(), meta);
        }
    }
    Ok(out)
}

fn node_config(meta: &NodeMeta, token: Option<String>) -> Option<NodeConfig> {
    let pool = match meta.pool.as_str() {
        "stable" => Pool::Stable,
        "debug" => Pool::Debug,
        _ => return None,
    };
    Some(NodeConfig {
        id: NodeId::new(&meta.node),
        pool,
        addr: UpstreamAddr(meta.addr),
        admin_addr: AdminAddr(meta.admin),
        weight: 1,
        admin_token: token,
        twin_of: None,
    })
}

/// Runs discovery for the router's `[discovery]` (returns at once for `static`).
pub async fn run(router: Arc<Router>) {
    let cfg = router.config().discovery.clone();
    if cfg.kind != "libvirt" {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watchers = tokio::task::JoinSet::new();
    for (i, uri) in cfg.uri.iter().enumerate() {
        watchers.spawn(watch_events(i, uri.clone(), tx.clone()));
        let _ = tx.send(Msg::Resync(i));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.resync_ms));
    let join = Join {
        router: router.clone(),
        tx: tx.clone(),
        token: cfg.admin_token.clone(),
        timeout: Duration::from_millis(cfg.join_timeout_ms),
    };
    // (uri index, domain) -> node in force / being checked.
    let mut joined: HashMap<(usize, String), NodeConfig> = HashMap::new();
    let mut joining: HashSet<(usize, String)> = HashSet::new();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = tick.tick() => {
                for i in 0..cfg.uri.len() {
                    let _ = tx.send(Msg::Resync(i));
                }
                continue;
            }
        };
        let mut changed = false;
        match msg {
            Msg::Down(i, name) => {
                joining.remove(&(i, name.clone()));
                if let Some(nc) = joined.remove(&(i, name)) {
                    // Requests in flight on it end now, before it leaves the pools.
                    if let Some(node) = router.pools.current().get(nc.id.as_str()) {
                        node.mark_stopped();
                    }
                    changed = true;
                }
            }
            Msg::Joined(i, name, nc, ok) => {
                if joining.remove(&(i, name.clone())) && ok {
                    tracing::info!(node = %nc.id, domain = %name, "discovery: node joins after a passing health check");
                    joined.insert((i, name), nc);
                    changed = true;
                }
            }
            Msg::Resync(i) => {
                let uri = &cfg.uri[i];
                let running = match list(uri, &cfg.cluster).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(uri = %uri, error = %e, "discovery: cannot list domains");
                        continue;
                    }
                };
                let before = joined.len();
                joined.retain(|(u, name), nc| {
                    *u != i
                        || running.get(name).is_some_and(|m| {
                            node_config(m, cfg.admin_token.clone()).as_ref() == Some(nc)
                        })
                });
                changed = joined.len() != before;
                for (name, meta) in running {
                    start_join(&join, i, name, &meta, &joined, &mut joining);
                }
            }
            Msg::Up(i, name) => {
                // Only this domain's metadata: no re-listing of the whole host per event.
                if let Ok(xml) =
                    virsh(&cfg.uri[i], &["metadata", &name, "--uri", METADATA_NS]).await
                    && let Some(meta) = parse_metadata(&xml)
                    && (cfg.cluster.is_empty() || meta.cluster == cfg.cluster)
                {
                    start_join(&join, i, name, &meta, &joined, &mut joining);
                }
            }
        }
        if changed {
            let nodes = distinct_nodes(&joined);
            tracing::info!(nodes = nodes.len(), "discovery: node set changed");
            router.set_discovered(nodes).await;
        }
    }
}

/// What a join's health check needs.
struct Join {
    router: Arc<Router>,
    tx: mpsc::UnboundedSender<Msg>,
    token: Option<String>,
    timeout: Duration,
}

/// Starts the health check that admits a running domain, unless it is in or on its way.
fn start_join(
    join: &Join,
    i: usize,
    name: String,
    meta: &NodeMeta,
    joined: &HashMap<(usize, String), NodeConfig>,
    joining: &mut HashSet<(usize, String)>,
) {
    let key = (i, name);
    if joined.contains_key(&key) || joining.contains(&key) {
        return;
    }
    let Some(nc) = node_config(meta, join.token.clone()) else {
        tracing::warn!(domain = %key.1, pool = %meta.pool, "discovery: unknown pool in metadata");
        return;
    };
    joining.insert(key.clone());
    let (router, tx, timeout) = (join.router.clone(), join.tx.clone(), join.timeout);
    tokio::spawn(async move {
        let ok = first_health(&router, &nc, timeout).await;
        let _ = tx.send(Msg::Joined(key.0, key.1, nc, ok));
    });
}

/// The nodes in force, by id: two URIs that reach one host (or two domains claiming one node id)
/// give one node, the one of the first URI listed.
fn distinct_nodes(joined: &HashMap<(usize, String), NodeConfig>) -> Vec<NodeConfig> {
    let mut entries: Vec<(&(usize, String), &NodeConfig)> = joined.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut nodes: Vec<NodeConfig> = Vec::new();
    for (key, nc) in entries {
        if nodes.iter().any(|n| n.id == nc.id) {
            tracing::warn!(node = %nc.id, domain = %key.1, "discovery: a second domain claims this node id; ignored");
            continue;
        }
        nodes.push(nc.clone());
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// Polls a new node's `/health` (the active check's probe) until it passes or `timeout` ends.
async fn first_health(router: &Router, nc: &NodeConfig, timeout: Duration) -> bool {
    let node = Node::new(nc);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if crate::checks::probe(router, &node).await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(node = %nc.id, "discovery: no passing health check; not joined");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows `virsh event --loop` on one URI, restarting it (after 1 s) when it ends.
async fn watch_events(i: usize, uri: String, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let child = tokio::process::Command::new("virsh")
            .args(["-q", "-c", &uri, "event", "--loop", "--event", "lifecycle"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    let mut lines = tokio::io::BufReader::new(out).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let Some((domain, event)) = parse_event(&line) else {
                            continue;
                        };
                        let msg = if is_down(&event) {
                            Msg::Down(i, domain)
                        } else if matches!(event.as_str(), "Started" | "Resumed") {
                            Msg::Up(i, domain)
                        } else {
                            continue;
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                }
                let _ = child.kill().await;
                tracing::warn!(uri = %uri, "discovery: the libvirt event stream ended; reconnecting");
            }
            Err(e) => tracing::warn!(uri = %uri, error = %e, "discovery: cannot run virsh event"),
        }
        // Whatever happened meanwhile is picked up by a re-listing.
        let _ = tx.send(Msg::Resync(i));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_events_are_parsed() {
        let xml = "<janus:node xmlns:janus=\"https://janus.invalid/xmlns/node/1\" cluster='c1' \
                   node=\"stable-0\" pool=\"stable\" service=\"faulty\" version=\"0.1.0\" \
                   addr=\"10.77.0.10:80\" admin=\"10.77.0.10:81\"/>\n";
        let m = parse_metadata(xml).expect("parsed");
        assert_eq!(
            (m.cluster.as_str(), m.node.as_str(), m.pool.as_str()),
            ("c1", "stable-0", "stable")
        );
        assert_eq!(m.admin.to_string(), "10.77.0.10:81");
        assert!(parse_metadata(&xml.replace("admin=", "x=")).is_none());
        assert!(parse_metadata(&xml.replace("10.77.0.10:80", "nowhere")).is_none());
        assert!(parse_metadata("").is_none());
        assert_eq!(
            parse_event(
                "2026-11-30 23:24:30.453+0000: event 'lifecycle' for domain 'janus-t-stable-0': Stopped Destroyed"
            ),
            Some(("janus-t-stable-0".into(), "Stopped".into()))
        );
        assert_eq!(parse_event("event 'reboot' for domain"), None);
        assert!(is_down("Stopped") && !is_down("Started"));
    }

    #[test]
    fn one_node_per_id_whatever_the_uris() {
        let m = parse_metadata(
            "<n cluster='c' node='stable-0' pool='stable' addr='10.0.0.1:80' admin='10.0.0.1:81'/>",
        )
        .expect("meta");
        let nc = node_config(&m, None).expect("stable");
        let mut joined = HashMap::new();
        joined.insert((1, "janus-c-stable-0".to_string()), nc.clone());
        joined.insert((0, "janus-c-stable-0".to_string()), nc);
        assert_eq!(distinct_nodes(&joined).len(), 1);
        let other = parse_metadata(
            "<n cluster='c' node='stable-1' pool='debug' addr='10.0.0.2:80' admin='10.0.0.2:81'/>",
        )
        .expect("meta");
        joined.insert((0, "d".into()), node_config(&other, None).expect("debug"));
        assert_eq!(distinct_nodes(&joined).len(), 2);
        let bad = NodeMeta {
            pool: "canary".into(),
            ..other
        };
        assert!(node_config(&bad, None).is_none());
    }
}

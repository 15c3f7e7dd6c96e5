//! The conformance driver: a table of cases (request -> expected status, body, headers) kept as data
//! next to each sample (`samples/<name>/conformance.toml`), run against any running node. One table, two
//! builds: the same file runs against the unix process and the unikernel image, and any difference is a
//! failure. `janus faults export` writes regression cases in the same format.
//!
//! Table format (TOML):
//! ```toml
//! service = "kv"                # the service the table is for
//! state = "state.bin"           # optional: snapshot restored through PUT /state before the cases
//! [[case]]
//! name = "put then get"
//! request = { method = "PUT", path = "/kv/a", body = "1", headers = { x = "y" } }
//! # also: body_fill = N (N bytes of 'x'), header_fill = N (an x-fill header of N bytes),
//! #       raw = "..." (exact bytes; then method/path are only labels)
//! expect = { status = 200, json_contains = { seq = 1 } }
//! # also: body, body_contains, json (exact), headers = { name = "value" }, janus_headers = false
//! ```
//! Unless `janus_headers = false`, every answer must carry `x-janus-flavor` (the node's flavour),
//! `x-janus-node` (its id), a 32-hex `x-janus-trace-id`, and `x-janus-state-seq` for a stateful service.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
pub use janus::conformance::{Case, Expect, Req, Table};

use crate::child::Node;
use crate::client::{self, Reply};

/// Runs the table at `path` against `node`; returns one line per failed check (empty = conformant).
pub fn run_file(path: &Path, node: &Node, stateful: bool) -> anyhow::Result<Vec<String>> {
    let table = Table::load(path)?;
    if let Some(state) = &table.state {
        let file = path.parent().unwrap_or(Path::new(".")).join(state);
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let r = node.admin("PUT", "/state", &bytes)?;
        anyhow::ensure!(
            r.status == 204,
            "restoring {} answered {}: {}",
            file.display(),
            r.status,
            r.text()
        );
    }
    Ok(run(&table, node, stateful))
}

/// Runs a table against `node`.
pub fn run(table: &Table, node: &Node, stateful: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for case in &table.cases {
        let mut fail = |msg: String| failures.push(format!("[{}] {}", case.name, msg));
        match send(node, &case.request) {
            Ok(reply) => {
                for problem in check(&case.expect, &reply, node, stateful) {
                    fail(problem);
                }
            }
            Err(e) => fail(format!("request failed: {e:#}")),
        }
    }
    failures
}

fn send(node: &Node, req: &Req) -> anyhow::Result<Reply> {
    if let Some(raw) = &req.raw {
        return client::send_raw(node.listen, raw.as_bytes(), Duration::from_secs(30));
    }
    let fill_header;
    let mut headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(n) = req.header_fill {
        fill_header = "h".repeat(n);
        headers.push(("x-fill", &fill_header));
    }
    let body = match req.body_fill {
        Some(n) => vec![b'x'; n],
        None => req.body.as_bytes().to_vec(),
    };
    client::request(node.listen, &req.method, &req.path, &headers, &body)
}

/// The problems of one answer against its expectation.
pub fn check(expect: &Expect, reply: &Reply, node: &Node, stateful: bool) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(status) = expect.status
        && reply.status != status
    {
        p.push(format!(
            "status {} != expected {status} (body: {})",
            reply.status,
            truncate(&reply.text())
        ));
    }
    if expect.no_fault && (reply.status >= 500 || reply.header("x-janus-fault").is_some()) {
        p.push(format!(
            "answer is a fault: status {} x-janus-fault {:?} (body: {})",
            reply.status,
            reply.header("x-janus-fault"),
            truncate(&reply.text())
        ));
    }
    if let Some(wrong) = &expect.not_body
        && reply.body == wrong.as_bytes()
    {
        p.push(format!("body is still the captured wrong answer {wrong:?}"));
    }
    if let Some(body) = &expect.body
        && reply.body != body.as_bytes()
    {
        p.push(format!(
            "body {:?} != expected {body:?}",
            truncate(&reply.text())
        ));
    }
    if let Some(part) = &expect.body_contains
        && !reply.text().contains(part.as_str())
    {
        p.push(format!("body {:?} lacks {part:?}", truncate(&reply.text())));
    }
    if expect.json.is_some() || expect.json_contains.is_some() {
        match reply.json() {
            Ok(v) => {
                if let Some(want) = &expect.json
                    && &v != want
                {
                    p.push(format!("json {v} != expected {want}"));
                }
                if let Some(want) = &expect.json_contains
                    && !contains(&v, want)
                {
                    p.push(format!("json {v} does not contain {want}"));
                }
            }
            Err(e) => p.push(format!("{e:#}")),
        }
    }
    for (name, want) in &expect.headers {
        match reply.header(name) {
            Some(v) if v == want => {}
            other => p.push(format!("header {name}: {other:?} != expected {want:?}")),
        }
    }
    if expect.janus_headers {
        let flavor = node.flavor.as_str();
        if reply.header("x-janus-flavor") != Some(flavor) {
            p.push(format!(
                "x-janus-flavor {:?} != {flavor:?}",
                reply.header("x-janus-flavor")
            ));
        }
        if reply.header("x-janus-node") != Some(node.node_id.as_str()) {
            p.push(format!(
                "x-janus-node {:?} != {:?}",
                reply.header("x-janus-node"),
                node.node_id
            ));
        }
        let trace_ok = reply
            .header("x-janus-trace-id")
            .is_some_and(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        if !trace_ok {
            p.push(format!(
                "x-janus-trace-id {:?} is not 32 hex digits",
                reply.header("x-janus-trace-id")
            ));
        }
        let seq = reply.header("x-janus-state-seq");
        if stateful && seq.and_then(|s| s.parse::<u64>().ok()).is_none() {
            p.push(format!("x-janus-state-seq {seq:?} missing or not a number"));
        }
        if !stateful && seq.is_some() {
            p.push("x-janus-state-seq on a stateless service".to_string());
        }
    }
    p
}

/// Whether `have` contains every field of `want` (objects recursively, everything else by equality).
pub fn contains(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (have, want) {
        (serde_json::Value::Object(h), serde_json::Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        _ => have == want,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Builds `sample` as `flavor`, starts one node (hello's upstream `backend` mapped to a real test
/// server answering "upstream says hi"), and runs the sample's table; returns the failures.
pub fn run_sample(sample: &str, flavor: janus::Flavor) -> anyhow::Result<Vec<String>> {
    let artifact = crate::child::artifact(sample, flavor);
    let stateful = !artifact.manifest["store"].is_null();
    let mut opts = janus::NodeOpts::default();
    let declared = artifact.manifest["upstreams"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for name in declared.iter().filter_map(|v| v.as_str()) {
        opts.upstreams
            .push((name.to_string(), static_upstream("upstream says hi")?));
    }
    let node = Node::start(&artifact, opts)?;
    let table = crate::child::sample_dir(sample).join("conformance.toml");
    run_file(&table, &node, stateful)
}

/// A real HTTP/1.1 server on 127.0.0.1 answering every request with 200 and `body`, on a background
/// thread for the rest of the test process.
pub fn static_upstream(body: &'static str) -> anyhow::Result<std::net::SocketAddr> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
            });
        }
    });
    Ok(addr)
}

//! Test support only: a small real HTTP node that speaks the Janus node protocol (service listener +
//! admin listener), a real `lb-router` process, and a tiny HTTP client. Used until (and beside) the
//! real unix/uk nodes; nothing here is used by the router itself.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub const NODE_TOKEN: &str = "node-token";
pub const ADMIN_TOKEN: &str = "router-admin-token";

/// How a test node behaves.
#[derive(Clone, Debug)]
pub struct NodeBehaviour {
    /// `uk` or `unix`: what `x-janus-flavor` says. A `uk` node "exits" on panic (connection reset).
    pub flavor: &'static str,
    /// `/panic` panics (unix: 500 + `x-janus-fault: panic`; uk: reset).
    pub panics: bool,
    /// `/compute?x=N` answers a wrong result.
    pub wrong_answers: bool,
}

impl NodeBehaviour {
    pub fn stable() -> Self {
        Self {
            flavor: "uk",
            panics: true,
            wrong_answers: false,
        }
    }
    pub fn stable_unix() -> Self {
        Self {
            flavor: "unix",
            panics: true,
            wrong_answers: false,
        }
    }
    pub fn debug() -> Self {
        Self {
            flavor: "unix",
            panics: false,
            wrong_answers: false,
        }
    }
}

#[derive(Debug, Default)]
struct NodeState {
    kv: Mutex<(u64, HashMap<String, String>)>,
    traces: Mutex<HashMap<String, String>>,
    served: AtomicU64,
    state_requests: Mutex<Vec<String>>,
}

/// A running test node.
pub struct TestNode {
    pub id: String,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    behaviour: NodeBehaviour,
    state: Arc<NodeState>,
    tasks: JoinSet<()>,
    alive: Arc<AtomicBool>,
}

impl TestNode {
    pub async fn start(id: &str, behaviour: NodeBehaviour) -> Self {
        let svc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind service");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        Self::start_on(id, behaviour, svc, admin, Arc::new(NodeState::default()))
    }

    fn start_on(
        id: &str,
        behaviour: NodeBehaviour,
        svc: TcpListener,
        admin: TcpListener,
        state: Arc<NodeState>,
    ) -> Self {
        let addr = svc.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let alive = Arc::new(AtomicBool::new(true));
        let mut tasks = JoinSet::new();
        let ctx = Arc::new((id.to_owned(), behaviour.clone(), state.clone()));
        tasks.spawn(serve(svc, ctx.clone(), false));
        tasks.spawn(serve(admin, ctx, true));
        Self {
            id: id.to_owned(),
            addr,
            admin_addr,
            behaviour,
            state,
            tasks,
            alive,
        }
    }

    /// Kills the node: listeners and every open connection go away at once.
    pub async fn kill(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Starts the node again on the same ports (state kept).
    pub async fn restart(&mut self) {
        let svc = bind_retry(self.addr).await;
        let admin = bind_retry(self.admin_addr).await;
        let fresh = Self::start_on(
            &self.id,
            self.behaviour.clone(),
            svc,
            admin,
            self.state.clone(),
        );
        *self = fresh;
    }

    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    pub fn state_requests(&self) -> Vec<String> {
        self.state.state_requests.lock().expect("lock").clone()
    }

    /// The `[[nodes]]` entry for a router config.
    pub fn toml(&self, pool: &str, weight: u32) -> String {
        format!(
            "[[nodes]]\nid = \"{}\"\npool = \"{pool}\"\naddr = \"{}\"\nadmin_addr = \"{}\"\nweight = {weight}\n\n",
            self.id, self.addr, self.admin_addr
        )
    }
}

async fn bind_retry(addr: SocketAddr) -> TcpListener {
    for _ in 0..200 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("could not re-bind {addr}");
}

type Ctx = Arc<(String, NodeBehaviour, Arc<NodeState>)>;

async fn serve(listener: TcpListener, ctx: Ctx, admin: bool) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        conns.spawn(async move {
            let (reset_tx, mut reset_rx) = tokio::sync::mpsc::channel::<()>(1);
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                let reset_tx = reset_tx.clone();
                async move {
                    let r = if admin {
                        admin_handle(&ctx, req).await
                    } else {
                        service_handle(&ctx, req).await
                    };
                    match r {
                        Some(r) => Ok::<_, std::convert::Infallible>(r),
                        None => {
                            // Simulate a VM exit: drop the connection without an answer.
                            let _ = reset_tx.send(()).await;
                            std::future::pending().await
                        }
                    }
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = reset_rx.recv() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

fn text(status: u16, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

async fn service_handle(ctx: &Ctx, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let (id, b, state) = (&ctx.0, &ctx.1, &ctx.2);
    state.served.fetch_add(1, Ordering::SeqCst);
    let trace = req
        .headers()
        .get("x-janus-trace-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || format!("{:032x}", state.served.load(Ordering::SeqCst) + 1),
            str::to_owned,
        );
    let seq = state.kv.lock().expect("lock").0;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = if path == "/panic" {
        if b.panics && b.flavor == "uk" {
            return None;
        }
        if b.panics {
            let mut r = text(500, "panicked: input-triggered panic\n");
            r.headers_mut()
                .insert("x-janus-fault", HeaderValue::from_static("panic"));
            r
        } else {
            text(200, format!("no panic on {id}\n"))
        }
    } else if path == "/compute" {
        let x: i64 = query(&req, "x").and_then(|v| v.parse().ok()).unwrap_or(0);
        let result = if b.wrong_answers { x * 2 + 1 } else { x * 2 };
        let mut r = text(200, format!("{{\"result\":{result},\"node\":\"{id}\"}}"));
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        r
    } else if let Some(key) = path.strip_prefix("/kv/") {
        let key = key.to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut kv = state.kv.lock().expect("lock");
        match method {
            Method::PUT | Method::POST => {
                kv.0 += 1;
                kv.1.insert(key, String::from_utf8_lossy(&body).into_owned());
                text(204, "")
            }
            _ => match kv.1.get(&key) {
                Some(v) => text(200, v.clone()),
                None => text(404, "no such key\n"),
            },
        }
    } else if path == "/slow" {
        let ms: u64 = query(&req, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        if b.panics {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        text(200, format!("slow answer from {id}\n"))
    } else if path == "/big" {
        let n: usize = query(&req, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
        text(200, "x".repeat(n))
    } else if path == "/echo" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        text(200, String::from_utf8_lossy(&body).into_owned())
    } else {
        text(200, format!("hello from {id}\n"))
    };
    state.traces.lock().expect("lock").insert(
        trace.clone(),
        format!("{{\"trace_id\":\"{trace}\",\"node\":\"{id}\",\"spans\":[{{\"name\":\"request\",\"path\":\"{path}\"}}]}}"),
    );
    let h = resp.headers_mut();
    h.insert("x-janus-flavor", HeaderValue::from_static(b.flavor));
    h.insert("x-janus-node", HeaderValue::from_str(id).expect("id"));
    h.insert(
        "x-janus-trace-id",
        HeaderValue::from_str(&trace).expect("trace"),
    );
    h.insert("x-janus-state-seq", HeaderValue::from(seq));
    Some(resp)
}

async fn admin_handle(ctx: &Ctx, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let (id, b, state) = (&ctx.0, &ctx.1, &ctx.2);
    if req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {NODE_TOKEN}"))
    {
        return Some(text(401, "unauthorized\n"));
    }
    let path = req.uri().path().to_owned();
    Some(if path == "/health" {
        let seq = state.kv.lock().expect("lock").0;
        text(
            200,
            format!(
                "{{\"status\":\"ok\",\"node\":\"{id}\",\"flavor\":\"{}\",\"service\":\"test\",\"seq\":{seq}}}",
                b.flavor
            ),
        )
    } else if let Some(t) = path.strip_prefix("/traces/") {
        match state.traces.lock().expect("lock").get(t) {
            Some(json) => text(200, json.clone()),
            None => text(404, "no such trace\n"),
        }
    } else if path == "/state" {
        let seq = query(&req, "seq").unwrap_or_else(|| "latest".into());
        state.state_requests.lock().expect("lock").push(seq.clone());
        text(200, format!("state-of-{id}@{seq}"))
    } else {
        text(404, "no such admin endpoint\n")
    })
}

/// A real `lb-router` process.
pub struct RouterProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-router-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The common head of a test config; `extra` and the nodes follow.
pub fn config_head(dir: &Path, extra: &str) -> String {
    format!(
        "[downstream]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n\
         [upstream]\nadmin_token = \"{NODE_TOKEN}\"\nrequest_timeout_ms = 3000\n\n\
         [faults]\npath = \"{}\"\n\n{extra}\n",
        dir.join("faults.db").display()
    )
}

impl RouterProcess {
    /// Writes the config and starts the router; waits for its "listening" line and its admin health.
    pub async fn start(dir: &Path, config: &str) -> Self {
        let config_path = dir.join("router.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lb-router"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lb-router");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read line");
            line
        })
        .await
        .expect("join");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .expect("addr")
        };
        let (addr, admin_addr) = (field("downstream="), field("admin="));
        let me = Self {
            child,
            addr,
            admin_addr,
            dir: dir.to_owned(),
            config_path,
        };
        let client = HttpClient::new();
        wait_for(Duration::from_secs(10), || async {
            client
                .admin(&me, Method::GET, "/health", "")
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await;
        me
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Polls `cond` until it holds, or panics after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it yields `Some`, or panics after `limit`.
pub async fn wait_value<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no value within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response as the tests see it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&self, router: &RouterProcess, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(router.addr, Method::GET, path, headers, Bytes::new())
            .await
            .expect("GET through router")
    }

    pub async fn admin(
        &self,
        router: &RouterProcess,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<Reply, String> {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(
            router.admin_addr,
            method,
            path,
            &[("authorization", auth.as_str())],
            body.to_owned(),
        )
        .await
    }
}

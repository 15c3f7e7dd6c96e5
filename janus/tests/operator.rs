//! The operator's tools on one running cluster (2 unikernel stable nodes, stable-0 with a gdbstub,
//! 1 debug process node, the router), as a user runs them: `janus debug` (gdb on a running
//! unikernel), the router's status page in a real headless chromium, and `janus top --once`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, janus, text};
use janus_integration::child::free_addr;
use janus_integration::client;
use serde_json::{Value, json};

/// 2 unikernel stable nodes (stable-0 with a gdbstub), 1 debug node, the router.
fn up() -> Cluster {
    Cluster::up(
        &format!("op-{}", std::process::id()),
        &format!(
            r#"service = "{svc}"
[stable]
count = 2
memory_mib = 64
gdbstub = ["stable-0"]
[debug]
count = 1
spare = 0
[router]
listen = "{router}"
admin = "{admin}"
request_timeout_ms = 1500
"#,
            svc = janus_integration::sample_dir("faulty").display(),
            router = free_addr(),
            admin = free_addr(),
        ),
    )
}

/// `janus debug NODE --exec E...` on the cluster.
fn debug(c: &Cluster, node: &str, exec: &[&str]) -> Output {
    let mut args = vec!["debug", node, "--cluster", &c.name];
    for e in exec {
        args.extend(["--exec", e]);
    }
    janus(&args)
}

fn admin_get(c: &Cluster, path: &str, headers: &[(&str, &str)]) -> client::Reply {
    client::get(c.admin(), path, headers).expect("admin answers")
}

#[test]
fn operator_tools_on_a_running_cluster() {
    let c = up();
    let stable0 = c.proc("stable-0").spec.listen;

    // ---- janus debug: gdb on a running unikernel -------------------------------------------
    let r = client::request(stable0, "PUT", "/kv/colour", &[], b"teal").expect("PUT");
    assert_eq!(r.status, 200, "{}", r.text());
    let o = debug(&c, "stable-0", &["bt", "janus-store"]);
    let out = text(&o);
    assert!(o.status.success(), "janus debug failed:\n{out}");
    // The backtrace walks from the CPL0 stub the idle vCPU sits in into the kernel's Rust code,
    // with file and line from the unstripped ELF.
    let rust_frame = out.lines().find(|l| {
        l.starts_with('#') && l.contains("backend_uk::") && l.contains(".rs:") && l.contains(" at ")
    });
    assert!(
        rust_frame.is_some(),
        "no Janus kernel frame with file:line:\n{out}"
    );
    assert!(out.contains("run_loop"), "{out}");
    // The store as the kernel holds it, through Rust's pretty printers.
    assert!(
        out.contains("\"colour\""),
        "janus-store shows no key:\n{out}"
    );
    assert!(out.contains("detached"), "{out}");
    // The node goes on serving after gdb detached.
    let r = client::get(stable0, "/kv/colour", &[]).expect("the node still answers");
    assert_eq!((r.status, r.text().as_str()), (200, "teal"));
    // A node without a gdbstub, and a node that does not exist, are refused by name.
    let o = debug(&c, "stable-1", &["bt"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("gdbstub = true"), "{}", text(&o));
    let o = debug(&c, "stable-9", &["bt"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("stable-0, stable-1, debug-0"),
        "{}",
        text(&o)
    );

    // ---- a fault to show: faulty's division by zero on a stable node, retried on debug -------
    for _ in 0..10 {
        let r = client::get(c.router(), "/div?a=6&b=3", &[]).expect("router answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let _ = client::get(c.router(), "/div?a=1&b=0", &[]);
    let bearer = format!("Bearer {}", c.token());
    let deadline = Instant::now() + Duration::from_secs(30);
    let fault_id = loop {
        let r = admin_get(&c, "/faults", &[("authorization", &bearer)]);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        if let Some(id) = v["faults"][0]["id"].as_i64() {
            break id;
        }
        assert!(Instant::now() < deadline, "no fault recorded");
        std::thread::sleep(Duration::from_millis(100));
    };

    // ---- the status page refuses without the token -----------------------------------------
    let r = admin_get(&c, "/", &[]);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("name=\"token\""), "{}", r.text());
    assert!(!r.text().contains("stable-0"));
    for path in ["/status/data", "/pools", "/faults"] {
        assert_eq!(admin_get(&c, path, &[]).status, 401, "{path}");
        let wrong = admin_get(&c, path, &[("cookie", "janus_admin=not-the-token")]);
        assert_eq!(wrong.status, 401, "{path}");
    }
    // The cookie authorises reads only: a change still needs the bearer header.
    let cookie = format!("janus_admin={}", c.token());
    let r = client::request(
        c.admin(),
        "POST",
        "/nodes/stable-1/drain",
        &[("cookie", &cookie)],
        b"",
    )
    .expect("admin answers");
    assert_eq!(r.status, 401, "{}", r.text());

    // ---- the status page in a real browser, with traffic flowing -----------------------------
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, router) = (stop.clone(), c.router());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client::get(router, "/div?a=6&b=3", &[]);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let shot = browse_status_page(&c, fault_id);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("load thread");
    eprintln!("status page screenshot: {}", shot.display());

    // ---- janus top --once ----------------------------------------------------------------------
    let o = janus(&["top", "--once", "--cluster", &c.name]);
    let out = text(&o);
    assert!(o.status.success(), "janus top --once failed:\n{out}");
    for id in ["stable-0", "stable-1", "debug-0"] {
        assert!(out.contains(id), "{id} missing from:\n{out}");
    }
    assert!(out.contains("faults"), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "escape codes in --once output:\n{out}"
    );

    // ---- janus top in a terminal (tmux): redrawn in place, quits on q ------------------------
    top_in_tmux(&c.name);
}

fn tmux(socket: &str, args: &[&str]) -> Output {
    Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .expect("tmux runs")
}

fn top_in_tmux(cluster: &str) {
    let has_tmux = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tmux {
        let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-deps");
        let ok = Command::new(deps)
            .arg("tmux")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux is needed: scripts/install-deps tmux failed");
    }
    let socket = format!("janus-top-{}", std::process::id());
    let cmd = format!("{} top --cluster {cluster}", env!("CARGO_BIN_EXE_janus"));
    let o = tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "30",
            &cmd,
        ],
    );
    assert!(o.status.success(), "tmux: {}", text(&o));
    let capture = || text(&tmux(&socket, &["capture-pane", "-p", "-t", "top"]));
    let clock = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains(" UTC"))
            .map(|l| l.trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let screen = capture();
        if screen.contains("stable-1") && clock(&screen).is_some() {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "janus top shows no nodes:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        first.contains("debug-0") && first.contains("q quits"),
        "{first}"
    );
    // Redrawn in place: the same screen, a later clock.
    loop {
        let screen = capture();
        if clock(&screen) != clock(&first) {
            assert_eq!(screen.lines().count(), first.lines().count(), "{screen}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "janus top did not redraw:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = tmux(&socket, &["send-keys", "-t", "top", "q"]);
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux(&socket, &["has-session", "-t", "top"])
        .status
        .success()
    {
        if Instant::now() > deadline {
            let screen = capture();
            let _ = tmux(&socket, &["kill-server"]);
            panic!("janus top did not quit on q:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = tmux(&socket, &["kill-server"]);
}

/// Chromium with a fresh profile, driven over the DevTools protocol.
struct Browser {
    child: Child,
    profile: PathBuf,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium() -> PathBuf {
    let find = || {
        ["chromium", "chromium-browser"].into_iter().find_map(|c| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(c))
                    .find(|f| f.is_file())
            })
        })
    };
    if let Some(c) = find() {
        return c;
    }
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-deps");
    let st = Command::new(deps).arg("chromium").status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "chromium is needed: scripts/install-deps chromium failed"
    );
    find().expect("chromium installed by scripts/install-deps")
}

impl Browser {
    fn start() -> Browser {
        let profile = std::env::temp_dir().join(format!("janus-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--window-size=1280,800",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium prints its DevTools address");
        let port: SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .parse()
            .expect("DevTools address");
        // The page target chromium opened for about:blank.
        let deadline = Instant::now() + Duration::from_secs(30);
        let page_ws = loop {
            let list = client::get(port, "/json/list", &[]).expect("DevTools /json/list");
            let v: Value = serde_json::from_slice(&list.body).unwrap_or(Value::Null);
            if let Some(ws) = v.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            }) {
                break ws;
            }
            assert!(Instant::now() < deadline, "no page target: {v}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(port).expect("connect DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (ws, _) = tungstenite::client::client(page_ws.as_str(), stream).expect("websocket");
        let mut b = Browser {
            child,
            profile,
            ws,
            next_id: 0,
        };
        b.call("Page.enable", json!({}));
        b.call("Network.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::text(msg))
            .expect("DevTools send");
        loop {
            let m = self.ws.read().expect("DevTools answer");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page (promises awaited); its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        );
    }

    /// Polls a JavaScript condition until it holds.
    fn wait_for(&mut self, cond: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.eval(&format!("!!({cond})")) != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {cond}; page text:\n{}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Signs in, checks the page shows every node and the fault, opens the fault, takes the screenshot
/// (kept at target/status-page.png); returns its path.
fn browse_status_page(c: &Cluster, fault_id: i64) -> PathBuf {
    let mut b = Browser::start();
    let base = format!("http://{}", c.admin());
    // Without the token: the sign-in form and nothing else.
    b.navigate(&format!("{base}/"));
    assert_eq!(
        b.eval("!!document.querySelector('form input[name=token]')"),
        true
    );
    assert_eq!(
        b.eval("document.body.innerText.includes('stable-0')"),
        false
    );
    let status = b.eval("fetch('/status/data').then(r => r.status)");
    assert_eq!(status, 401);
    // A wrong token is refused with a message.
    b.eval("document.getElementById('token').value = 'wrong'; document.forms[0].submit(); true");
    b.wait_for(
        "document.readyState === 'complete' && document.getElementById('login-error') \
         && document.getElementById('login-error').innerText.includes('Wrong token')",
        Duration::from_secs(20),
    );
    // The right token, once, through the form.
    b.eval(&format!(
        "document.getElementById('token').value = '{}'; document.forms[0].submit(); true",
        c.token()
    ));
    b.wait_for(
        "document.getElementById('pools') && document.querySelectorAll('#pools tr[data-node]').length === 3",
        Duration::from_secs(30),
    );
    // The cookie: HttpOnly (invisible to scripts) and SameSite=Strict.
    assert_eq!(b.eval("document.cookie"), "");
    let cookies = b.call("Network.getCookies", json!({ "urls": [base.clone()] }));
    let cookie = cookies["cookies"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["name"] == "janus_admin"))
        .cloned()
        .expect("janus_admin cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    // Every node of the cluster, with its flavour from its own metrics, and the fault.
    for id in ["stable-0", "stable-1", "debug-0"] {
        assert_eq!(
            b.eval(&format!(
                "!!document.querySelector('#pools tr[data-node=\"{id}\"]')"
            )),
            true,
            "{id} not on the page"
        );
    }
    b.wait_for(
        "document.querySelector('#pools tr[data-node=\"stable-1\"] .flavor').innerText === 'uk' \
         && document.querySelector('#pools tr[data-node=\"debug-0\"] .flavor').innerText === 'unix'",
        Duration::from_secs(20),
    );
    let row = format!("#faults-table tr[data-fault=\"{fault_id}\"]");
    b.wait_for(
        &format!("!!document.querySelector('{row}')"),
        Duration::from_secs(20),
    );
    let row_text = b.eval(&format!("document.querySelector('{row}').innerText"));
    assert!(
        row_text
            .as_str()
            .is_some_and(|t| t.contains("/div?a=1&b=0") && t.contains("panic")),
        "{row_text}"
    );
    // Live rates: requests per second, an effective split and a p99 from a stable node's histogram.
    b.wait_for(
        "parseFloat(document.getElementById('total-rps').innerText) > 0 \
         && !document.getElementById('split').innerText.includes('stable – ·') \
         && [...document.querySelectorAll('#pools tr[data-node^=\"stable-\"] td:nth-child(8)')] \
              .some(td => /[0-9]/.test(td.innerText))",
        Duration::from_secs(30),
    );
    // The live refresh: the page's clock moves.
    let t0 = b.eval("document.getElementById('updated').innerText");
    b.wait_for(
        &format!("document.getElementById('updated').innerText !== {t0}"),
        Duration::from_secs(10),
    );
    // A fault's detail: both answers, the trace, the commands to copy.
    b.eval(&format!("document.querySelector('{row}').click(); true"));
    let repro = format!("janus faults repro {fault_id} --cluster {}", c.name);
    b.wait_for(
        &format!("document.getElementById('detail-body').innerText.includes({repro:?})"),
        Duration::from_secs(20),
    );
    let detail = b.eval("document.getElementById('detail-body').innerText");
    let detail = detail.as_str().unwrap_or_default();
    for want in [
        "Stable build (uk)",
        "Debug build (unix)",
        "DEBUG TRACE",
        "faults export",
    ] {
        assert!(
            detail.to_uppercase().contains(&want.to_uppercase()),
            "{want} missing from the detail:\n{detail}"
        );
    }
    let shot = b.call("Page.captureScreenshot", json!({ "format": "png" }));
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("png data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    std::fs::write(&path, png).expect("write screenshot");
    path
}

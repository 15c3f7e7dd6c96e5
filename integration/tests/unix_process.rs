//! The unix build as a real child process (built with `janus build --flavor unix`): SIGTERM/SIGINT drain
//! an in-flight request and exit 0; bad flags and config are refused with a message naming the problem
//! and exit 2; `--print-manifest` prints the manifest.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use janus::{Flavor, NodeOpts};
use janus_integration::{Node, artifact, client, free_addr};

/// Runs the binary to completion; one that is still running after the bound is killed and fails the
/// test (it should have refused to start).
fn run(sample: &str, args: &[&str]) -> Output {
    let a = artifact(sample, Flavor::Unix);
    let mut child = Command::new(&a.path)
        .args(args)
        .env_remove("JANUS_LISTEN")
        .env_remove("JANUS_ADMIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    for _ in 0..6000 {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!("{args:?} did not exit; stderr: {}", stderr(&out));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls until `check` is true (bounded number of short polls, never a fixed wait).
fn poll(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("gave up waiting for {what}");
}

#[test]
fn bad_flags_and_config_are_refused_with_exit_2_naming_the_problem() {
    let listen = free_addr().to_string();
    let admin = free_addr().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--upstream".into(), "nope=127.0.0.1:9".into()],
            "'nope'",
        ),
        (vec!["--set".into(), "colour=red".into()], "'colour'"),
        (vec!["--admin".into(), "nowhere".into()], "--admin"),
        (
            vec!["--upstream".into(), "backend".into()],
            "NAME=ADDR:PORT",
        ),
        (vec!["--log-level".into(), "=[[x".into()], "log-level"),
        (
            vec!["--trace-capacity".into(), "0".into()],
            "trace-capacity",
        ),
        (
            vec!["--config".into(), "/nonexistent/node.toml".into()],
            "/nonexistent/node.toml",
        ),
        (vec!["--no-such-flag".into()], "--no-such-flag"),
    ];
    for (args, needle) in cases {
        let mut all: Vec<&str> = vec!["--listen", &listen, "--admin-token", "t"];
        if args[0] != "--admin" {
            all.extend(["--admin", admin.as_str()]);
        }
        all.extend(args.iter().map(String::as_str));
        let out = run("hello", &all);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: exit {:?}, stderr: {}",
            out.status,
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: stderr does not name {needle}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn environment_layer_is_read_and_checked() {
    let listen = free_addr().to_string();
    let admin = free_addr().to_string();
    let a = artifact("hello", Flavor::Unix);
    let run_env = |key: &str, value: &str| {
        let mut child = Command::new(&a.path)
            .args(["--listen", &listen, "--admin", &admin, "--admin-token", "t"])
            .env(key, value)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        for _ in 0..6000 {
            if child.try_wait().expect("try_wait").is_some() {
                return child.wait_with_output().expect("output");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        panic!("{key}={value}: the node did not refuse to start");
    };
    let out = run_env("JANUS_UPSTREAMS__NOPE", "127.0.0.1:9");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'nope'"), "{}", stderr(&out));
    let out = run_env("JANUS_TRACE_CAPACITY", "0");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("trace-capacity"), "{}", stderr(&out));
}

#[test]
fn print_manifest_prints_the_service_manifest() {
    let out = run("kv", &["--print-manifest"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("manifest JSON");
    assert_eq!(v["name"], "kv");
    assert_eq!(v["store"]["retain_ops"], 1024);
}

#[test]
fn listener_in_use_is_a_start_failure_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let admin = free_addr().to_string();
    let out = run(
        "hello",
        &["--listen", &addr, "--admin", &admin, "--admin-token", "t"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));
}

#[test]
fn sigterm_drains_an_in_flight_request_and_exits_0() {
    let a = artifact("faulty", Flavor::Unix);
    let mut node = Node::start(&a, NodeOpts::default()).expect("node starts");
    // The state to restore later comes from a second node of the same binary.
    let donor = Node::start(&a, NodeOpts::default()).expect("donor starts");
    let put = client::request(donor.listen, "PUT", "/kv/go", &[], b"released").expect("put");
    assert_eq!(put.status, 200);
    let snapshot = donor.admin("GET", "/state", b"").expect("snapshot");
    assert_eq!(snapshot.status, 200);

    let mut waiting = TcpStream::connect(node.listen).expect("connect");
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    waiting
        .write_all(b"GET /wait?key=go HTTP/1.1\r\nhost: t\r\nx-janus-trace-id: 33333333333333333333333333333333\r\n\r\n")
        .expect("send");
    poll("in-flight trace", || {
        node.admin("GET", "/traces/33333333333333333333333333333333", b"")
            .ok()
            .and_then(|r| r.json().ok())
            .is_some_and(|t| t["in_flight"] == true)
    });

    node.signal("TERM").expect("SIGTERM");
    poll("listener closed", || {
        TcpStream::connect(node.listen).is_err()
    });
    assert!(node.is_running(), "still draining the in-flight request");
    let restored = node
        .admin("PUT", "/state", &snapshot.body)
        .expect("restore");
    assert_eq!(restored.status, 204);

    let mut buf = Vec::new();
    let reply = client::read_response(&mut waiting, &mut buf, false).expect("the in-flight answer");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "released");
    assert_eq!(reply.header("x-janus-flavor"), Some("unix"));
    let status = node.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", node.output());
    assert!(node.output().contains("draining"), "{}", node.output());
    let mut rest = Vec::new();
    let _ = waiting.read_to_end(&mut rest);
}

#[test]
fn sigint_stops_an_idle_node_with_exit_0() {
    let a = artifact("hello", Flavor::Unix);
    let mut node = Node::start(&a, NodeOpts::default()).expect("node starts");
    let r = client::get(node.listen, "/", &[]).expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-janus-node"), Some(node.node_id.as_str()));
    node.signal("INT").expect("SIGINT");
    let status = node.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", node.output());
}

#[test]
fn generated_admin_token_is_printed_and_written_to_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let a = artifact("hello", Flavor::Unix);
    let listen = free_addr().to_string();
    let admin = free_addr().to_string();
    let node_id = format!("tokentest-{}", std::process::id());
    let runtime_dir = std::env::temp_dir().join(format!("janus-xdg-{}", std::process::id()));
    std::fs::create_dir_all(&runtime_dir).expect("dir");
    let child = Command::new(&a.path)
        .args([
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--node-id",
            &node_id,
        ])
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let path = runtime_dir.join(format!("janus-{node_id}.token"));
    poll("token file", || {
        std::fs::read_to_string(&path).is_ok_and(|t| !t.trim().is_empty())
    });
    let token = std::fs::read_to_string(&path).expect("token");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let auth = format!("Bearer {}", token.trim());
    let admin_addr = admin.parse().expect("addr");
    poll("admin up", || {
        client::get(admin_addr, "/health", &[("authorization", &auth)])
            .is_ok_and(|r| r.status == 200)
    });
    assert_eq!(
        client::get(admin_addr, "/health", &[]).expect("get").status,
        401
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&path.display().to_string()), "{stdout}");
    let _ = std::fs::remove_dir_all(runtime_dir);
}

#[test]
fn json_logs_follow_the_run_time_log_level() {
    let a = artifact("hello", Flavor::Unix);
    let opts = NodeOpts {
        log_format: Some("json".to_string()),
        ..NodeOpts::default()
    };
    let node = Node::start(&a, opts).expect("node starts");
    let count = |needle: &str| node.output().matches(needle).count();
    assert_eq!(
        client::get(node.listen, "/before", &[])
            .expect("get")
            .status,
        404
    );
    poll("first request logged", || count("/before") > 0);
    let set = node.admin("PUT", "/log-level", b"warn").expect("put");
    assert_eq!(set.status, 200);
    assert_eq!(
        client::get(node.listen, "/during-warn", &[])
            .expect("get")
            .status,
        404
    );
    let set = node.admin("PUT", "/log-level", b"info").expect("put");
    assert_eq!(set.status, 200);
    assert_eq!(
        client::get(node.listen, "/after", &[]).expect("get").status,
        404
    );
    poll("third request logged", || count("/after") > 0);
    assert_eq!(count("/during-warn"), 0, "{}", node.output());
    let line = node
        .output()
        .lines()
        .find(|l| l.contains("/after") && l.contains("request completed"))
        .map(str::to_string)
        .expect("a request log line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["fields"]["message"], "request completed");
    assert_eq!(v["fields"]["status"], 404);
    assert_eq!(v["span"]["path"], "/after");
    assert_eq!(v["span"]["trace_id"].as_str().map(str::len), Some(32));
}

#[test]
fn a_second_signal_cuts_the_drain_short_with_exit_1() {
    let a = artifact("faulty", Flavor::Unix);
    let mut node = Node::start(&a, NodeOpts::default()).expect("node starts");
    let mut hung = TcpStream::connect(node.listen).expect("connect");
    hung.write_all(b"GET /wait?key=never HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("send");
    poll("request in flight", || {
        node.admin("GET", "/health", b"")
            .ok()
            .and_then(|r| r.json().ok())
            .is_some_and(|h| h["in_flight"] == 1)
    });
    node.signal("TERM").expect("SIGTERM");
    poll("draining", || TcpStream::connect(node.listen).is_err());
    node.signal("INT").expect("SIGINT");
    // The default drain bound is 10 s; the second signal must end the process before it, with 1.
    let status = node.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", node.output());
    assert!(node.output().contains("second signal"), "{}", node.output());
}

/// The default unix build (profile `checked`) keeps overflow checks in the service's own code while
/// its registry dependencies are built with release semantics: faulty's `u8` sum panics (500,
/// `x-janus-fault: panic`, the message in the body) where the unikernel would wrap silently.
#[test]
fn the_checked_build_keeps_overflow_checks_in_the_service() {
    let a = artifact("faulty", Flavor::Unix);
    let node = Node::start(&a, NodeOpts::default()).expect("node starts");
    let reply = client::request(node.listen, "GET", "/avg?values=200,100", &[], b"").expect("avg");
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert_eq!(reply.header("x-janus-fault"), Some("panic"));
    assert!(
        reply.text().contains("attempt to add with overflow"),
        "{}",
        reply.text()
    );
    let fine = client::request(node.listen, "GET", "/avg?values=20,10", &[], b"").expect("avg");
    assert_eq!(fine.status, 200, "{}", fine.text());
    let manifest = std::fs::read_to_string(
        janus::janus_home().join("target/janus/gen/janus-samples-faulty-unix/Cargo.toml"),
    )
    .expect("the generated wrapper");
    for local in [
        "janus-samples-faulty",
        "backend-unix",
        "runtime-abi",
        "janus-http1",
    ] {
        assert!(
            manifest.contains(&format!(
                "[profile.checked.package.\"{local}\"]\noverflow-checks = true\ndebug-assertions = true"
            )),
            "{local} keeps its checks:\n{manifest}"
        );
    }
    assert!(
        manifest.contains(
            "[profile.checked.package.\"*\"]\noverflow-checks = false\ndebug-assertions = false"
        ),
        "{manifest}"
    );
}

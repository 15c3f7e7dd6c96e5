//! Start-up refusals, config merging, and the graceful drain.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;

use backend_unix::{Cli, ConfigError, Node, NodeError};
use clap::Parser;
use common::{Conn, admin, config, poll, start};
use janus_samples_faulty::Faulty;
use janus_samples_hello::Hello;
use runtime_abi::store::encode_snapshot;

#[tokio::test]
async fn undeclared_upstream_or_config_key_is_refused_by_name() {
    let mut cfg = config("hello-refuse");
    cfg.upstreams.insert(
        "elsewhere".to_string(),
        "127.0.0.1:9".parse().expect("addr"),
    );
    let err = Node::start::<Hello>(cfg).await.expect_err("refused");
    assert!(matches!(err, NodeError::Config(ConfigError::Upstream(_))));
    assert!(err.to_string().contains("'elsewhere'"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let mut cfg = config("hello-refuse-2");
    cfg.set.insert("colour".to_string(), "red".to_string());
    let err = Node::start::<Hello>(cfg).await.expect_err("refused");
    assert!(err.to_string().contains("'colour'"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let mut cfg = config("hello-greeting");
    cfg.set.insert("greeting".to_string(), "Hi".to_string());
    let node = start::<Hello>(cfg).await;
    assert_eq!(common::get(node.public_addr(), "/").await.text(), "Hi!\n");
    node.stop().await;
}

#[test]
fn flags_override_the_config_file_and_bad_input_names_the_problem() {
    let dir = std::env::temp_dir().join(format!("janus-unix-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("node.toml");
    let mut f = std::fs::File::create(&file).expect("create");
    writeln!(
        f,
        "listen = \"127.0.0.1:7001\"\nadmin = \"127.0.0.1:7002\"\nlog_level = \"debug\"\n[upstreams]\nbackend = \"127.0.0.1:7003\"\n[set]\ngreeting = \"file\""
    )
    .expect("write");
    let path = file.to_string_lossy().into_owned();
    let cli = Cli::try_parse_from([
        "node",
        "--config",
        &path,
        "--listen",
        "127.0.0.1:7100",
        "--set",
        "greeting=flag",
        "--trace-capacity",
        "7",
    ])
    .expect("parse");
    let cfg = cli.node_config().expect("merged");
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:7100", "flag wins");
    assert_eq!(
        cfg.admin.to_string(),
        "127.0.0.1:7002",
        "file beats default"
    );
    assert_eq!(cfg.log_level, "debug");
    assert_eq!(cfg.trace_capacity, 7);
    assert_eq!(cfg.set.get("greeting").map(String::as_str), Some("flag"));
    assert_eq!(
        cfg.upstreams.get("backend").map(ToString::to_string),
        Some("127.0.0.1:7003".to_string())
    );

    // Defaults.
    let cfg = Cli::try_parse_from(["node"])
        .expect("parse")
        .node_config()
        .expect("defaults");
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.admin.to_string(), "127.0.0.1:9080");
    assert_eq!(cfg.trace_capacity, 1024);

    // Errors name the problem.
    let e = Cli::try_parse_from(["node", "--upstream", "backend"]).expect_err("bad flag");
    assert!(e.to_string().contains("NAME=ADDR:PORT"), "{e}");
    let e = Cli::try_parse_from(["node", "--listen", "nowhere"]).expect_err("bad addr");
    assert!(e.to_string().contains("--listen"), "{e}");
    let e = Cli::try_parse_from(["node", "--log-level", "=[[x"])
        .expect("parse")
        .node_config()
        .expect_err("bad filter");
    assert!(e.to_string().contains("log-level"), "{e}");
    let e = Cli::try_parse_from(["node", "--trace-capacity", "0"])
        .expect("parse")
        .node_config()
        .expect_err("zero");
    assert!(e.to_string().contains("trace-capacity"), "{e}");
    let e = Cli::try_parse_from(["node", "--config", "/nonexistent/janus.toml"])
        .expect("parse")
        .node_config()
        .expect_err("missing file");
    assert!(e.to_string().contains("/nonexistent/janus.toml"), "{e}");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").expect("write");
    let e = Cli::try_parse_from(["node", "--config", &path])
        .expect("parse")
        .node_config()
        .expect_err("unknown key");
    assert!(e.to_string().contains("listen_port"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_in_flight_request() {
    let node = start::<Faulty>(config("faulty-drain")).await;
    let public = node.public_addr();
    let mut waiting = Conn::connect(public).await;
    waiting
        .send(b"GET /wait?key=go HTTP/1.1\r\nhost: t\r\nx-janus-trace-id: 22222222222222222222222222222222\r\n\r\n")
        .await;
    // The hung request is visible in the flight recorder while in flight.
    poll("in-flight /wait trace", || async {
        let list = admin(&node, "GET", "/traces?last=0", b"").await.json();
        list["traces"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .filter(|t| {
                t["in_flight"] == true && t["trace_id"] == "22222222222222222222222222222222"
            })
    })
    .await;

    node.shutdown();
    // New connections are refused once the listener is dropped.
    poll("listener closed", || async {
        tokio::net::TcpStream::connect(public)
            .await
            .err()
            .map(|_| ())
    })
    .await;
    // Write the awaited key through the admin API, which serves until the drain ends.
    let mut entries = BTreeMap::new();
    entries.insert("go".to_string(), b"released".to_vec());
    let put = admin(&node, "PUT", "/state", &encode_snapshot(1, &entries)).await;
    assert_eq!(put.status, 204);
    let r = waiting
        .read_response(false)
        .await
        .expect("the in-flight answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "released");
    r.assert_node_headers("faulty-drain");
    node.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_a_request_that_never_finishes() {
    let mut cfg = config("faulty-drain-timeout");
    cfg.drain_timeout_ms = 200;
    let node = start::<Faulty>(cfg).await;
    let mut waiting = Conn::connect(node.public_addr()).await;
    waiting
        .send(b"GET /wait?key=never HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    poll("request in flight", || async {
        (node.metrics().in_flight() == 1).then_some(())
    })
    .await;
    let metrics = std::sync::Arc::clone(node.metrics());
    node.stop().await;
    assert!(
        waiting.closed().await,
        "connection closed after the drain bound"
    );
    assert_eq!(metrics.in_flight(), 0, "the hung handler was cancelled");
}

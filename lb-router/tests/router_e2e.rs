//! End-to-end tests: real `lb-router` processes, real nodes on real sockets (test-support nodes that
//! follow the node protocol), a real HTTP client, a real SQLite store.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;

/// Node `s1` (weight 1) in the stable pool and `d1` (weight 1) in the debug pool, behind a router
/// whose config starts with `head` (a `config_head`).
async fn stable_and_debug(
    dir: &Path,
    stable: NodeBehaviour,
    debug: NodeBehaviour,
    head: String,
) -> (TestNode, TestNode, RouterProcess) {
    let s1 = TestNode::start("s1", stable).await;
    let d1 = TestNode::start("d1", debug).await;
    let cfg = format!("{head}{}{}", s1.toml("stable", 1), d1.toml("debug", 1));
    (s1, d1, RouterProcess::start(dir, &cfg).await)
}

fn pool_of(r: &Reply) -> String {
    r.header("x-janus-pool").unwrap_or("none").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_honoured_across_pools_and_nodes() {
    let dir = temp_dir("weights");
    let s1 = TestNode::start("s1", NodeBehaviour::stable()).await;
    let s2 = TestNode::start("s2", NodeBehaviour::stable()).await;
    let d1 = TestNode::start("d1", NodeBehaviour::debug()).await;
    let cfg = format!(
        "{}{}{}{}",
        config_head(&dir, "[mix]\nstable_weight = 80\ndebug_weight = 20\n"),
        s1.toml("stable", 3),
        s2.toml("stable", 1),
        d1.toml("debug", 1)
    );
    let router = RouterProcess::start(&dir, &cfg).await;
    let client = HttpClient::new();
    let n = 2000;
    let mut by_node: HashMap<String, u32> = HashMap::new();
    for _ in 0..n {
        let r = client.get(&router, "/hello", &[]).await;
        assert_eq!(r.status, 200);
        let node = r.header("x-janus-node").expect("x-janus-node").to_owned();
        assert!(r.header("x-janus-flavor").is_some());
        *by_node.entry(node).or_default() += 1;
    }
    let get = |k: &str| f64::from(*by_node.get(k).unwrap_or(&0));
    let stable_share = (get("s1") + get("s2")) / f64::from(n);
    assert!(
        (0.75..=0.85).contains(&stable_share),
        "stable share {stable_share} not ~0.80: {by_node:?}"
    );
    let s1_share = get("s1") / (get("s1") + get("s2"));
    assert!(
        (0.70..=0.80).contains(&s1_share),
        "s1 share of stable {s1_share} not ~0.75: {by_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beta_users_always_reach_debug_and_users_stay_on_their_channel() {
    let dir = temp_dir("beta");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 50\ndebug_weight = 50\n\n[channels]\nbeta_user_percent = 30.0\n"
        ),
    )
    .await;
    let client = HttpClient::new();
    for _ in 0..50 {
        assert_eq!(
            pool_of(
                &client
                    .get(&router, "/hello", &[("x-janus-channel", "beta")])
                    .await
            ),
            "debug"
        );
        assert_eq!(
            pool_of(
                &client
                    .get(&router, "/hello", &[("cookie", "a=1; janus_channel=beta")])
                    .await
            ),
            "debug"
        );
    }
    let mut pools_seen = HashMap::new();
    for u in 0..60 {
        let user = format!("user-{u}");
        let first = pool_of(&client.get(&router, "/hello", &[("x-user-id", &user)]).await);
        for _ in 0..10 {
            let again = pool_of(&client.get(&router, "/hello", &[("x-user-id", &user)]).await);
            assert_eq!(again, first, "user {user} moved between pools");
        }
        *pools_seen.entry(first).or_insert(0) += 1;
    }
    assert!(
        pools_seen.len() == 2,
        "users should spread over both pools: {pools_seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_on_stable_is_answered_by_debug_and_recorded_with_trace_and_state() {
    let dir = temp_dir("panic");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable_unix(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\nconsecutive_failures = 100\n"
        ),
    )
    .await;
    let client = HttpClient::new();
    // Give the stable node some state first.
    let put = client
        .send(router.addr, Method::PUT, "/kv/a", &[], "1")
        .await
        .expect("put");
    assert_eq!(put.header("x-janus-node"), Some("s1"));
    let r = client
        .get(
            &router,
            "/panic",
            &[
                ("authorization", "Bearer client-secret"),
                ("x-user-id", "u-7"),
            ],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "client must get the debug node's answer: {r:?}"
    );
    assert_eq!(r.header("x-janus-node"), Some("d1"));
    assert_eq!(r.header("x-janus-flavor"), Some("unix"));
    assert_eq!(r.header("x-janus-retried-from"), Some("s1"));
    let id = r.header("x-janus-fault-id").expect("fault id").to_owned();
    let fault = wait_value(Duration::from_secs(10), || async {
        let fault = client
            .admin(&router, Method::GET, &format!("/faults/{id}"), "")
            .await
            .expect("admin")
            .json();
        (!fault["debug_trace"].is_null() && !fault["stable_state"].is_null()).then_some(fault)
    })
    .await;
    assert_eq!(fault["kind"], "fault");
    assert_eq!(fault["stable_node"], "s1");
    assert_eq!(fault["stable_outcome"], "panic");
    assert_eq!(
        fault["stable_state_seq"], 1,
        "seq before the request: one PUT so far"
    );
    assert_eq!(fault["stable_state"], "state-of-s1@1");
    assert_eq!(fault["debug_node"], "d1");
    assert_eq!(fault["debug_outcome"], "ok_200");
    let trace_id = fault["trace_id"].as_str().expect("trace id");
    assert_eq!(
        fault["debug_trace_id"], trace_id,
        "the debug node answered under the router's trace id"
    );
    let trace: serde_json::Value =
        serde_json::from_str(fault["debug_trace"].as_str().expect("trace")).expect("json");
    assert_eq!(trace["trace_id"], trace_id);
    assert_eq!(trace["node"], "d1");
    let headers = fault["request_headers"].as_str().expect("headers");
    assert!(
        !headers.contains("client-secret") && headers.contains("[redacted]"),
        "{headers}"
    );
    assert!(headers.contains("u-7"));
    // The list endpoint filters by kind.
    let list = client
        .admin(&router, Method::GET, "/faults?kind=fault", "")
        .await
        .expect("list")
        .json();
    assert_eq!(list["faults"].as_array().expect("array").len(), 1);
    let none = client
        .admin(&router, Method::GET, "/faults?kind=divergence", "")
        .await
        .expect("list")
        .json();
    assert!(none["faults"].as_array().expect("array").is_empty());
    // Replay the captured request on the debug node through the admin API.
    let replay = client
        .admin(
            &router,
            Method::POST,
            &format!("/faults/{id}/replay?node=d1"),
            "",
        )
        .await
        .expect("replay");
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.json()["status"], 200);
    let refused = client
        .admin(
            &router,
            Method::POST,
            &format!("/faults/{id}/replay?node=s1"),
            "",
        )
        .await
        .expect("replay");
    assert_eq!(refused.status, 400, "replay only on debug nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stable_node_costs_no_get_is_ejected_and_readmitted() {
    let dir = temp_dir("kill");
    let mut s1 = TestNode::start("s1", NodeBehaviour::stable()).await;
    let s2 = TestNode::start("s2", NodeBehaviour::stable()).await;
    let d1 = TestNode::start("d1", NodeBehaviour::debug()).await;
    let cfg = format!(
        "{}{}{}{}",
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\ninterval_ms = 100\ntimeout_ms = 200\n\
             consecutive_failures = 2\neject_base_ms = 200\neject_max_ms = 1000\nmax_ejected_percent = 50\n"
        ),
        s1.toml("stable", 1),
        s2.toml("stable", 1),
        d1.toml("debug", 1)
    );
    let router = RouterProcess::start(&dir, &cfg).await;
    let client = HttpClient::new();
    for _ in 0..20 {
        assert_eq!(client.get(&router, "/hello", &[]).await.status, 200);
    }
    s1.kill().await;
    let mut from_debug = 0;
    for _ in 0..200 {
        let r = client.get(&router, "/hello", &[]).await;
        assert_eq!(
            r.status, 200,
            "a GET failed after a stable node died: {r:?}"
        );
        from_debug += u32::from(r.header("x-janus-node") == Some("d1"));
    }
    assert!(
        from_debug >= 1,
        "the failure on the killed node must have been answered by the debug node"
    );
    let node_state = |pools: serde_json::Value, id: &str| -> String {
        pools["pools"]
            .as_array()
            .expect("pools")
            .iter()
            .flat_map(|p| p["nodes"].as_array().expect("nodes").iter())
            .find(|n| n["id"] == id)
            .map(|n| n["state"].as_str().expect("state").to_owned())
            .expect("node listed")
    };
    let pools = client
        .admin(&router, Method::GET, "/pools", "")
        .await
        .expect("pools")
        .json();
    // Out of rotation: ejected by the failed request at once, and unhealthy by its failed checks.
    let state = node_state(pools, "s1");
    assert!(state == "ejected" || state == "unhealthy", "{state}");
    s1.restart().await;
    wait_for(Duration::from_secs(10), || async {
        let pools = client
            .admin(&router, Method::GET, "/pools", "")
            .await
            .expect("pools")
            .json();
        node_state(pools, "s1") == "healthy"
    })
    .await;
    wait_for(Duration::from_secs(5), || async {
        client
            .get(&router, "/hello", &[])
            .await
            .header("x-janus-node")
            == Some("s1")
    })
    .await;
    let metrics = client
        .admin(&router, Method::GET, "/metrics", "")
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("janus_router_node_ejected{node=\"s1\",pool=\"stable\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_wrong_answer_is_captured_as_divergence() {
    let dir = temp_dir("mirror");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable(),
        NodeBehaviour {
            wrong_answers: true,
            ..NodeBehaviour::debug()
        },
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[mirror]\nignore_json_fields = [\"node\"]\n\n\
             [[routes]]\nprefix = \"/compute\"\nmirror_fraction = 1.0\n\n[[routes]]\nprefix = \"/hello\"\nmirror_fraction = 1.0\n"
        ),
    )
    .await;
    let client = HttpClient::new();
    // A route whose answers agree except for ignored parts: no divergence.
    let r = client.get(&router, "/hello", &[]).await;
    assert_eq!(r.status, 200);
    let r = client.get(&router, "/compute?x=21", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-janus-node"),
        Some("s1"),
        "the primary answer comes from the stable node"
    );
    assert!(
        r.body.contains("\"result\":42"),
        "primary answer must not be altered: {}",
        r.body
    );
    // /hello bodies differ ("hello from s1" vs "hello from d1"): a divergence too, so filter by route.
    let faults = wait_value(Duration::from_secs(10), || async {
        let faults = client
            .admin(&router, Method::GET, "/faults?kind=divergence", "")
            .await
            .expect("list")
            .json();
        let any = faults["faults"]
            .as_array()
            .expect("array")
            .iter()
            .any(|f| f["route"] == "/compute");
        any.then_some(faults)
    })
    .await;
    let list = faults["faults"].as_array().expect("array");
    let compute: Vec<_> = list.iter().filter(|f| f["route"] == "/compute").collect();
    assert_eq!(compute.len(), 1, "{list:?}");
    let id = compute[0]["id"].as_i64().expect("id");
    let f = client
        .admin(&router, Method::GET, &format!("/faults/{id}"), "")
        .await
        .expect("get")
        .json();
    assert!(
        f["detail"].as_str().expect("detail").contains("$.result"),
        "{f}"
    );
    assert!(
        !f["detail"].as_str().expect("detail").contains("$.node"),
        "ignored field reported: {f}"
    );
    assert_eq!(f["stable_response_body"], "{\"result\":42,\"node\":\"s1\"}");
    assert_eq!(f["debug_response_body"], "{\"result\":43,\"node\":\"d1\"}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_without_idempotency_key_is_not_replayed_and_the_error_is_honest() {
    let dir = temp_dir("post");
    let (_s1, d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\nconsecutive_failures = 100\n"
        ),
    )
    .await;
    let client = HttpClient::new();
    let before = d1.served();
    let r = client
        .send(router.addr, Method::POST, "/panic", &[], "payload")
        .await
        .expect("post");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body.contains("not replayed") && r.body.contains("Idempotency-Key"),
        "{}",
        r.body
    );
    assert_eq!(
        r.header("x-janus-router-error"),
        Some("upstream_not_replayed")
    );
    assert_eq!(
        d1.served(),
        before,
        "the debug node must not have seen the POST"
    );
    let id = r
        .header("x-janus-fault-id")
        .expect("the fault is still recorded");
    let f = client
        .admin(&router, Method::GET, &format!("/faults/{id}"), "")
        .await
        .expect("get")
        .json();
    assert!(f["debug_node"].is_null());
    assert_eq!(f["request_body"], "payload");
    // With an Idempotency-Key the same POST is replayed on the debug node.
    let r = client
        .send(
            router.addr,
            Method::POST,
            "/panic",
            &[("idempotency-key", "k-1")],
            "payload",
        )
        .await
        .expect("post");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-janus-node"), Some("d1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_bad_file_keeps_the_old_config() {
    let dir = temp_dir("reload");
    let s1 = TestNode::start("s1", NodeBehaviour::stable()).await;
    let d1 = TestNode::start("d1", NodeBehaviour::debug()).await;
    let nodes = format!("{}{}", s1.toml("stable", 1), d1.toml("debug", 1));
    let good = format!(
        "{}{nodes}",
        config_head(&dir, "[mix]\nstable_weight = 100\ndebug_weight = 0\n")
    );
    let router = RouterProcess::start(&dir, &good).await;
    let client = HttpClient::new();
    assert_eq!(pool_of(&client.get(&router, "/hello", &[]).await), "stable");
    // Bad value: the admin reload is refused naming the key, the old config stays.
    let bad = format!(
        "{}{nodes}",
        config_head(
            &dir,
            "[mix]\nstable_weight = 0\ndebug_weight = 100\n\n[health]\nmax_ejected_percent = 300\n"
        )
    );
    std::fs::write(&router.config_path, &bad).expect("write");
    let r = client
        .admin(&router, Method::POST, "/reload", "")
        .await
        .expect("reload");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("health.max_ejected_percent"), "{}", r.body);
    // Unparsable file through SIGHUP: refused too.
    std::fs::write(&router.config_path, "[mix\nstable_weight = ").expect("write");
    let kill = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(router.pid().to_string())
        .status()
        .expect("kill");
    assert!(kill.success());
    let metrics_has = |needle: &'static str| {
        let client = client.clone();
        let router = &router;
        async move {
            client
                .admin(router, Method::GET, "/metrics", "")
                .await
                .expect("metrics")
                .body
                .contains(needle)
        }
    };
    wait_for(Duration::from_secs(5), || {
        metrics_has("janus_router_reloads_failed_total 2")
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            pool_of(&client.get(&router, "/hello", &[]).await),
            "stable",
            "old config must stay in force"
        );
    }
    // A good file through SIGHUP takes effect, without restarting (same process, same keep-alive client).
    let flipped = format!(
        "{}{nodes}",
        config_head(&dir, "[mix]\nstable_weight = 0\ndebug_weight = 100\n")
    );
    std::fs::write(&router.config_path, &flipped).expect("write");
    let kill = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(router.pid().to_string())
        .status()
        .expect("kill");
    assert!(kill.success());
    wait_for(Duration::from_secs(5), || async {
        pool_of(&client.get(&router, "/hello", &[]).await) == "debug"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_fault() {
    let dir = temp_dir("sigkill");
    let (_s1, _d1, mut router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable_unix(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\nconsecutive_failures = 1000000\n\n\
             [retry]\nbudget_min_per_sec = 100000\nbudget_max_tokens = 100000\n"
        ),
    )
    .await;
    let client = HttpClient::new();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, acked, addr) = (client.clone(), acked.clone(), router.addr);
        workers.push(tokio::spawn(async move {
            loop {
                match client
                    .send(addr, Method::GET, "/panic", &[], Bytes::new())
                    .await
                {
                    Ok(r) => {
                        if let Some(id) = r.header("x-janus-fault-id").and_then(|v| v.parse().ok())
                        {
                            acked.lock().expect("lock").push(id);
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for(Duration::from_secs(20), || async {
        acked.lock().expect("lock").len() >= 50
    })
    .await;
    router.child.kill().expect("SIGKILL the router");
    let _ = router.child.wait();
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let acked = acked.lock().expect("lock").clone();
    let store =
        lb_router::FaultStore::open(dir.join("faults.db")).expect("open the store after the crash");
    for id in &acked {
        assert!(
            store.get(*id).expect("read").is_some(),
            "acknowledged fault {id} lost after SIGKILL"
        );
    }
    // Repeats of the same (node, outcome) are counted into one row (dedupe), and a count is
    // committed before its answer like a row: the rows the clients saw count at least their answers.
    let mut distinct = acked.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let counted: i64 = distinct
        .iter()
        .map(|id| store.get(*id).expect("read").expect("row").summary.count)
        .sum();
    assert!(
        counted >= acked.len() as i64,
        "{counted} counted for {} acknowledged faults",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limits_answer_400_408_413_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("limits");
    let s1 = TestNode::start("s1", NodeBehaviour::stable()).await;
    let cfg = format!(
        "{}{}",
        config_head(
            &dir,
            "[downstream]\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\nmax_header_bytes = 2048\nmax_body_bytes = 1000\n"
        )
        .replacen("[downstream]\nlisten = \"127.0.0.1:0\"\n", "", 1)
        .replacen("[downstream]\n", "[downstream]\nlisten = \"127.0.0.1:0\"\n", 1),
        s1.toml("stable", 1)
    );
    let router = RouterProcess::start(&dir, &cfg).await;
    let client = HttpClient::new();
    // HEAD keeps the length of the GET answer.
    let get = client.get(&router, "/hello", &[]).await;
    let head = client
        .send(router.addr, Method::HEAD, "/hello", &[], Bytes::new())
        .await
        .expect("head");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "{head:?}"
    );
    // 413: body over the limit.
    let r = client
        .send(router.addr, Method::POST, "/echo", &[], vec![b'x'; 5000])
        .await
        .expect("post");
    assert_eq!(r.status, 413);
    let r = client
        .send(router.addr, Method::POST, "/echo", &[], vec![b'x'; 500])
        .await
        .expect("post");
    assert_eq!(r.status, 200);
    let raw = |req: Vec<u8>| {
        let addr = router.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(&req).await.expect("write");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    // 431: header over the limit.
    let big = format!(
        "GET /hello HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "y".repeat(4000)
    );
    let out = raw(big.into_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // 400: malformed request line.
    let out = raw(b"GARBAGE\r\n\r\n".to_vec()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // 408: the head never completes.
    let out = raw(b"GET /hello HTTP/1.1\r\nhost: x\r\n".to_vec()).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // 408: the body never completes.
    let out =
        raw(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc".to_vec()).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_changes_weights_drains_and_adds_nodes() {
    let dir = temp_dir("admin");
    let s1 = TestNode::start("s1", NodeBehaviour::stable()).await;
    let s2 = TestNode::start("s2", NodeBehaviour::stable()).await;
    let s3 = TestNode::start("s3", NodeBehaviour::stable()).await;
    let cfg = format!(
        "{}{}{}",
        config_head(&dir, "[mix]\nstable_weight = 100\ndebug_weight = 0\n"),
        s1.toml("stable", 1),
        s2.toml("stable", 1)
    );
    let router = RouterProcess::start(&dir, &cfg).await;
    let client = HttpClient::new();
    let anon = client
        .send(router.admin_addr, Method::GET, "/pools", &[], Bytes::new())
        .await
        .expect("admin");
    assert_eq!(anon.status, 401);
    let wrong = client
        .send(
            router.admin_addr,
            Method::GET,
            "/pools",
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        )
        .await
        .expect("admin");
    assert_eq!(wrong.status, 401);
    let nodes_hit = |n: usize| {
        let client = client.clone();
        let router = &router;
        async move {
            let mut seen = HashMap::new();
            for _ in 0..n {
                let r = client.get(router, "/hello", &[]).await;
                *seen
                    .entry(r.header("x-janus-node").expect("node").to_owned())
                    .or_insert(0) += 1;
            }
            seen
        }
    };
    // Drain s1: nothing new goes to it.
    let r = client
        .admin(&router, Method::POST, "/nodes/s1/drain", "")
        .await
        .expect("drain");
    assert_eq!(r.status, 200);
    let seen = nodes_hit(50).await;
    assert_eq!(seen.get("s1"), None, "{seen:?}");
    client
        .admin(&router, Method::POST, "/nodes/s1/undrain", "")
        .await
        .expect("undrain");
    // Weight 0 on s2: all traffic to s1.
    let r = client
        .admin(&router, Method::PUT, "/nodes/s2/weight", "{\"weight\":0}")
        .await
        .expect("weight");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = nodes_hit(50).await;
    assert_eq!(seen.get("s1"), Some(&50), "{seen:?}");
    let bad = client
        .admin(&router, Method::PUT, "/nodes/s2/weight", "{\"weight\":-1}")
        .await
        .expect("weight");
    assert_eq!(bad.status, 400);
    // Add s3 at run time and take s1 out: traffic moves to s3.
    let body = format!(
        "{{\"id\":\"s3\",\"pool\":\"stable\",\"addr\":\"{}\",\"admin_addr\":\"{}\",\"weight\":1}}",
        s3.addr, s3.admin_addr
    );
    let r = client
        .admin(&router, Method::POST, "/nodes", &body)
        .await
        .expect("add");
    assert_eq!(r.status, 201, "{}", r.body);
    client
        .admin(&router, Method::DELETE, "/nodes/s1", "")
        .await
        .expect("delete");
    let seen = nodes_hit(30).await;
    assert_eq!(seen.get("s3"), Some(&30), "{seen:?}");
    let pools = client
        .admin(&router, Method::GET, "/pools", "")
        .await
        .expect("pools")
        .json();
    let ids: Vec<_> = pools["pools"][0]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].clone())
        .collect();
    assert_eq!(ids, vec!["s2", "s3"]);
    let metrics = client
        .admin(&router, Method::GET, "/metrics", "")
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("janus_router_node_requests_total{node=\"s3\",pool=\"stable\"} 30"),
        "{metrics}"
    );
    assert!(metrics.contains("janus_router_request_duration_seconds_count{pool=\"stable\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("slowreader");
    let s1 = TestNode::start("s1", NodeBehaviour::stable()).await;
    let write_timeout_ms =
        std::env::var("LB_ROUTER_TEST_WRITE_TIMEOUT_MS").unwrap_or_else(|_| "300".into());
    let cfg = format!("{}{}", config_head(&dir, ""), s1.toml("stable", 1))
        .replacen(
            "[downstream]\n",
            &format!("[downstream]\nwrite_timeout_ms = {write_timeout_ms}\n"),
            1,
        )
        .replacen(
            "[upstream]\n",
            "[upstream]\nmax_response_body_bytes = 67108864\n",
            1,
        );
    let router = RouterProcess::start(&dir, &cfg).await;
    // Larger than what the socket buffers on both sides can absorb.
    let size = 32 * 1024 * 1024;
    let mut s = tokio::net::TcpStream::connect(router.addr)
        .await
        .expect("connect");
    s.write_all(format!("GET /big?n={size} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    // The slow client: reads nothing for a while (far longer than write_timeout_ms), then drains.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the router kept the stalled connection open"
    );
    assert!(
        got < size,
        "the whole {size}-byte answer was delivered ({got}): the stalled client was not cut off"
    );
    // The router itself is fine.
    let client = HttpClient::new();
    assert_eq!(client.get(&router, "/hello", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_timeout_is_retried_and_the_retry_budget_bounds_a_storm() {
    let dir = temp_dir("budget");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable_unix(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\nconsecutive_failures = 1000\n\n\
             [retry]\nbudget_ratio = 0.0\nbudget_min_per_sec = 2\nbudget_max_tokens = 2\n"
        )
        .replacen("request_timeout_ms = 3000", "request_timeout_ms = 200", 1),
    )
    .await;
    let client = HttpClient::new();
    // A stable node that does not answer in time: the debug node answers.
    let r = client.get(&router, "/slow?ms=2000", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-janus-node"), Some("d1"));
    let id = r.header("x-janus-fault-id").expect("fault id").to_owned();
    let f = client
        .admin(&router, Method::GET, &format!("/faults/{id}"), "")
        .await
        .expect("get")
        .json();
    assert_eq!(f["stable_outcome"], "timeout");
    // A storm of faults: the budget (2 tokens, about 2 per second) lets only a few retries through;
    // the rest get the stable node's own answer, marked as not replayed.
    let mut replayed = 0;
    let mut refused = 0;
    for _ in 0..20 {
        let r = client.get(&router, "/panic", &[]).await;
        if r.header("x-janus-retried-from").is_some() {
            replayed += 1;
        } else {
            assert_eq!(r.status, 500);
            assert!(
                r.header("x-janus-router-error")
                    .unwrap_or("")
                    .contains("retry budget"),
                "{r:?}"
            );
            refused += 1;
        }
    }
    assert!(replayed <= 6, "budget let {replayed} retries through");
    assert!(refused >= 14, "only {refused} refused");
    let metrics = client
        .admin(&router, Method::GET, "/metrics", "")
        .await
        .expect("metrics")
        .body;
    let denied = format!("janus_router_retries_total{{result=\"denied_budget\"}} {refused}");
    assert!(metrics.contains(&denied), "{metrics}");
}

/// A body field of a fault record as text (the admin API gives bytes as a JSON array).
fn body_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => String::from_utf8_lossy(
            &a.iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect::<Vec<u8>>(),
        )
        .into_owned(),
        _ => String::new(),
    }
}

/// The client's view of a node's panic: status, fault kind and trace id, not the message.
fn assert_redacted(r: &Reply) {
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        !r.body.contains("input-triggered") && !r.body.contains("panicked"),
        "the panic message reached the client: {}",
        r.body
    );
    let trace = r.header("x-janus-trace-id").expect("trace id header");
    let json: serde_json::Value = serde_json::from_str(&r.body).expect("json body");
    assert_eq!(json["trace_id"], trace, "{}", r.body);
    assert!(
        json["error"].as_str().is_some_and(|e| e.contains("panic")),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_node_panic_reaches_clients_without_its_message() {
    let dir = temp_dir("redact");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable_unix(),
        // The debug node panics too.
        NodeBehaviour::stable_unix(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\nconsecutive_failures = 100\n",
        ),
    )
    .await;
    let client = HttpClient::new();
    // A stable panic retried on the debug node, which panics as well: its 500 reaches the client.
    let r = client.get(&router, "/panic", &[]).await;
    assert_eq!(r.header("x-janus-node"), Some("d1"), "{r:?}");
    assert_redacted(&r);
    // The full text stays in the fault store.
    let id = r.header("x-janus-fault-id").expect("fault id").to_owned();
    let fault = client
        .admin(&router, Method::GET, &format!("/faults/{id}"), "")
        .await
        .expect("admin")
        .json();
    assert!(
        body_text(&fault["debug_response_body"]).contains("input-triggered"),
        "{fault}"
    );
    // A beta request goes to the debug node first; its panic answer is redacted the same way.
    let r = client
        .get(&router, "/panic", &[("x-janus-channel", "beta")])
        .await;
    assert_eq!(r.header("x-janus-pool"), Some("debug"), "{r:?}");
    assert!(r.header("x-janus-retried-from").is_none());
    assert_redacted(&r);
    // Answers without x-janus-fault pass unchanged.
    let ok = client.get(&router, "/kv/none", &[]).await;
    assert!(!ok.body.contains("the service failed"), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_signing_key_only_signed_beta_markers_reach_debug() {
    let dir = temp_dir("signed-beta");
    let key = "8f3a1c0e9b7d6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877";
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            &format!(
                "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[channels]\nbeta_signing_key = \"{key}\"\n"
            ),
        ),
    )
    .await;
    let client = HttpClient::new();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let signed = lb_router::proxy::sign_beta(key, "beta", expires).expect("sign");
    let wrong = lb_router::proxy::sign_beta(&key.replace('8', "9"), "beta", expires).expect("sign");
    let expired = lb_router::proxy::sign_beta(key, "beta", expires - 7200).expect("sign");
    let cookie = |v: &str| format!("a=1; janus_channel={v}");
    for _ in 0..10 {
        // Valid signature, by header and by cookie: beta, so the debug pool.
        let r = client
            .get(&router, "/hello", &[("x-janus-channel", &signed)])
            .await;
        assert_eq!(pool_of(&r), "debug", "{r:?}");
        let r = client
            .get(&router, "/hello", &[("cookie", &cookie(&signed))])
            .await;
        assert_eq!(pool_of(&r), "debug", "{r:?}");
        // Wrong key, expired, or no signature at all: ordinary traffic (all stable here).
        for marker in [wrong.as_str(), expired.as_str(), "beta"] {
            let r = client
                .get(&router, "/hello", &[("x-janus-channel", marker)])
                .await;
            assert_eq!(pool_of(&r), "stable", "{marker}: {r:?}");
            let r = client
                .get(&router, "/hello", &[("cookie", &cookie(marker))])
                .await;
            assert_eq!(pool_of(&r), "stable", "{marker}: {r:?}");
        }
    }
}

/// Sends `signal` to a process with kill(1).
fn signal(pid: u32, signal: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{signal} {pid}");
    if signal == "STOP" {
        // kill(2) returns before the signal is delivered: wait until every thread of the process is
        // stopped, or a busy router could still read what the caller writes next.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} did not stop"
            );
            std::thread::yield_now();
        }
    }
}

/// Whether every thread of `pid` is in state `T` (stopped), from `/proc/PID/task/*/stat`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the parenthesised command name, which may hold spaces.
                let after = stat.rsplit_once(')')?.1;
                after.split_whitespace().next().map(|s| s == "T")
            })
            .unwrap_or(false)
    })
}

/// One GET that hangs on the stable node (`/slow`, no answer within the request timeout: like
/// faulty's `/wait`) batched with 15 fast GETs on one lane, the hanging one first: the 15 are
/// answered by the stable node without waiting for it (handed back from the lane and sent again on
/// connections of their own), and no fault row is written for them; the hanging one alone is a fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_get_on_a_lane_holds_up_only_itself() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("lane-hang");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable_unix(),
        NodeBehaviour::debug(),
        config_head(
            &dir,
            "[mix]\nstable_weight = 100\ndebug_weight = 0\n\n[health]\nconsecutive_failures = 1000\n",
        )
        // One worker: the requests of one scheduler turn share one lane.
        .replacen(
            "listen = \"127.0.0.1:0\"\n\n[admin]",
            "listen = \"127.0.0.1:0\"\nworkers = 1\n\n[admin]",
            1,
        )
        .replacen("request_timeout_ms = 3000", "request_timeout_ms = 4000", 1),
    )
    .await;
    let client = HttpClient::new();
    // 16 client connections, each served once so that the router holds them all, waiting for the
    // next request.
    let mut conns = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(router.addr)
            .await
            .expect("connect");
        s.write_all(b"GET /hello HTTP/1.1\r\nhost: r\r\n\r\n")
            .await
            .expect("write");
        read_answer(&mut s).await;
        conns.push(s);
    }
    // With the router stopped, the 16 requests (the hanging one first) all wait in its sockets: it
    // reads them in one turn when it runs again.
    signal(router.pid(), "STOP");
    for (i, s) in conns.iter_mut().enumerate() {
        let path = if i == 0 {
            "/slow?ms=60000".to_owned()
        } else {
            format!("/hello?i={i}")
        };
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: r\r\n\r\n").as_bytes())
            .await
            .expect("write");
    }
    signal(router.pid(), "CONT");
    let mut hanging = conns.remove(0);
    let slow = tokio::spawn(async move { read_answer(&mut hanging).await });
    for mut s in conns {
        let answer = read_answer(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-janus-node: s1"), "{answer}");
        assert!(!answer.contains("x-janus-fault-id"), "{answer}");
    }
    assert!(
        !slow.is_finished(),
        "the fast GETs waited for the hanging one"
    );
    let metrics = client
        .admin(&router, Method::GET, "/metrics", "")
        .await
        .expect("metrics")
        .body;
    let resent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("janus_router_upstream_lane_resent_total "))
        .and_then(|v| v.parse().ok())
        .expect("resent counter");
    assert!(
        resent >= 1,
        "the GETs were not batched behind the hanging one"
    );
    // The hanging GET times out on the stable node and is answered by the debug node: one fault.
    let answer = slow.await.expect("slow reader");
    assert!(answer.contains("x-janus-node: d1"), "{answer}");
    let faults = client
        .admin(&router, Method::GET, "/faults", "")
        .await
        .expect("faults")
        .json();
    let paths: Vec<&str> = faults["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, ["/slow?ms=60000"], "{faults}");
}

/// Reads one answer with a `content-length` body from a raw connection; its head and body as text.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("an answer within 30 s")
            .expect("read");
        assert!(n > 0, "connection closed: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A debug node that fails a request it was picked for first (here the beta channel) is recorded as
/// a `debug_fault`, with its trace and its state as of the request; a repeat is counted into the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_node_failing_a_beta_request_is_recorded_with_trace_and_state() {
    let dir = temp_dir("debug-fault");
    let (_s1, _d1, router) = stable_and_debug(
        &dir,
        NodeBehaviour::stable(),
        // An instrumented node that panics on /panic (500 + x-janus-fault: panic).
        NodeBehaviour::stable_unix(),
        config_head(&dir, ""),
    )
    .await;
    let client = HttpClient::new();
    let beta = [("x-janus-channel", "beta")];
    let r = client.get(&router, "/panic", &beta).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.header("x-janus-node"), Some("d1"));
    let id = r.header("x-janus-fault-id").expect("fault id").to_owned();
    let fault = wait_value(Duration::from_secs(10), || async {
        let f = client
            .admin(&router, Method::GET, &format!("/faults/{id}"), "")
            .await
            .expect("get")
            .json();
        (f["debug_trace"].is_string() && f["stable_state"].is_string()).then_some(f)
    })
    .await;
    assert_eq!(fault["kind"], "debug_fault", "{fault}");
    assert_eq!(fault["debug_node"], "d1");
    assert_eq!(fault["debug_outcome"], "panic");
    assert!(fault["stable_node"].is_null(), "{fault}");
    assert!(
        fault["debug_trace"]
            .as_str()
            .is_some_and(|t| t.contains("/panic")),
        "{fault}"
    );
    assert!(
        fault["stable_state"]
            .as_str()
            .is_some_and(|s| s.starts_with("state-of-d1@")),
        "{fault}"
    );
    let again = client.get(&router, "/panic", &beta).await;
    assert_eq!(again.header("x-janus-fault-id"), Some(id.as_str()));
    let row = client
        .admin(&router, Method::GET, &format!("/faults/{id}"), "")
        .await
        .expect("get")
        .json();
    assert_eq!(row["count"], 2, "{row}");
}

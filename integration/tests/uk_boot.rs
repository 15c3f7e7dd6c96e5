//! Boot-and-serve tests of the unikernel build: images built with `janus build --flavor uk`,
//! booted under real QEMU (microvm with KVM and with TCG, q35 with KVM), driven over real sockets
//! through QEMU's user-networking port forwards. Readiness is polled; nothing sleeps a fixed time.
//! Tests that need KVM say so and pass vacuously when /dev/kvm cannot be opened.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use janus::Flavor;
use janus::NodeOpts;
use janus::flavor::uk::{Accel, EXIT_PANIC, MIN_MEMORY_MIB, Machine, kvm_available};
use janus::launch::{AccelArg, MachineArg};
use janus_integration::client::{self, Reply};
use janus_integration::{Node, artifact};

fn opts(machine: Machine, accel: Accel) -> NodeOpts {
    NodeOpts {
        machine: MachineArg(machine),
        accel: AccelArg(accel),
        ..NodeOpts::default()
    }
}

fn start(sample: &str, machine: Machine, accel: Accel) -> Node {
    let a = artifact(sample, Flavor::Uk);
    Node::start(&a, opts(machine, accel)).expect("the image boots and answers")
}

fn need_kvm(test: &str) -> bool {
    if kvm_available() {
        return true;
    }
    eprintln!("{test}: skipped, /dev/kvm cannot be opened");
    false
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    client::get(addr, target, headers).expect("request answered")
}

/// Checks what every service response of a uk node must carry.
fn check_hello(node: &Node) {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(node.listen, "/", &[("traceparent", tp)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("Hello from Janus"), "{}", r.text());
    assert_eq!(r.header("x-janus-flavor"), Some("uk"));
    assert_eq!(r.header("x-janus-node"), Some(node.node_id.as_str()));
    assert_eq!(
        r.header("x-janus-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(r.header("x-janus-state-seq"), None, "hello has no store");
    let generated = get(node.listen, "/echo?msg=abc", &[]);
    assert_eq!(generated.text(), "abc");
    let id = generated.header("x-janus-trace-id").expect("trace id");
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    assert_eq!(get(node.listen, "/nope", &[]).status, 404);
    let health = node.admin("GET", "/health", b"").expect("health");
    let json = health.json().expect("json");
    assert_eq!(json["flavor"], "uk");
    assert_eq!(json["service"], "hello");
    assert_eq!(json["node"], node.node_id.as_str());
    assert!(json["seq"].is_null());
}

#[test]
fn microvm_kvm_serves_hello() {
    if !need_kvm("microvm_kvm_serves_hello") {
        return;
    }
    let node = start("hello", Machine::Microvm, Accel::Kvm);
    check_hello(&node);
    assert!(
        node.output().contains("virtio-mmio v1@"),
        "microvm's default, legacy virtio-mmio:\n{}",
        node.output()
    );
    assert!(
        node.output().contains("(kvmclock)"),
        "TSC rate from kvmclock under KVM:\n{}",
        node.output()
    );
}

#[test]
fn microvm_tcg_serves_hello() {
    let node = start("hello", Machine::Microvm, Accel::Tcg);
    check_hello(&node);
}

#[test]
fn q35_kvm_serves_hello_over_pci() {
    if !need_kvm("q35_kvm_serves_hello_over_pci") {
        return;
    }
    let node = start("hello", Machine::Q35, Accel::Kvm);
    check_hello(&node);
    assert!(
        node.output().contains("virtio-net pci"),
        "{}",
        node.output()
    );
}

#[test]
fn admin_needs_the_token_and_console_is_served() {
    let node = start("hello", Machine::Microvm, Accel::Auto);
    let no_token = client::request(node.admin, "GET", "/health", &[], b"").expect("answered");
    assert_eq!(no_token.status, 401);
    let wrong = client::request(
        node.admin,
        "GET",
        "/metrics",
        &[("authorization", "Bearer wrong")],
        b"",
    )
    .expect("answered");
    assert_eq!(wrong.status, 401);
    get(node.listen, "/", &[]);
    let metrics = node.admin("GET", "/metrics", b"").expect("metrics").text();
    assert!(
        metrics.contains("janus_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("janus_request_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(metrics.contains("janus_panics_total 0"));
    let console = node.admin("GET", "/console", b"").expect("console").text();
    assert!(console.contains("listening on :80"), "{console}");
}

fn metric(node: &Node, name: &str) -> u64 {
    let text = node.admin("GET", "/metrics", b"").expect("metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

/// On a keep-alive connection each answer leaves in one frame that also acknowledges the
/// request (the kernel sends after the woken tasks ran, not before), and the kernel's counters
/// are on `/metrics`.
#[test]
fn an_answer_carries_the_ack_of_its_request() {
    let node = start("hello", Machine::Microvm, Accel::Auto);
    let mut c = TcpStream::connect(node.listen).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let exchange = |c: &mut TcpStream, i: usize| {
        // One write, one segment (`write!` would send the pieces as they are formatted).
        let req = format!("GET /echo?msg=m{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        c.write_all(req.as_bytes()).expect("write");
        let reply = client::read_response(c, &mut Vec::new(), false).expect("response");
        assert_eq!((reply.status, reply.text()), (200, format!("m{i}")));
    };
    exchange(&mut c, 0);
    let sent_before = metric(&node, "janus_uk_frames_sent_total");
    let n = 200;
    for i in 1..=n {
        exchange(&mut c, i);
    }
    let sent = metric(&node, "janus_uk_frames_sent_total") - sent_before;
    // One frame per answer, plus the answer to the first /metrics and the odd window update.
    assert!(
        sent <= n as u64 + n as u64 / 10 + 5,
        "{sent} frames sent for {n} answers (a bare ACK before each answer doubles it)"
    );
    assert!(metric(&node, "janus_uk_loop_turns_total") > 0);
    assert!(metric(&node, "janus_uk_tcp_sockets") >= 2);
    let _ = metric(&node, "janus_uk_halts_total");
    let _ = metric(&node, "janus_uk_halt_poll_hits_total");
}

/// A body of many frames goes in and comes back intact: far more frames than the transmit
/// ring's 32 buffers, so buffers are recycled while the device still reads earlier ones.
#[test]
fn a_large_body_goes_in_and_out_intact() {
    let node = start("kv", Machine::Microvm, Accel::Auto);
    let body: Vec<u8> = (0..900_000u32)
        .map(|i| {
            b"abcdefghijklmnopqrstuvwxyz0123456789"[(i.wrapping_mul(2_654_435_761) >> 27) as usize]
        })
        .collect();
    let put = client::request(node.listen, "PUT", "/kv/big", &[], &body).expect("put");
    assert_eq!(put.status, 200, "{}", put.text());
    for _ in 0..3 {
        let got = get(node.listen, "/kv/big", &[]);
        assert_eq!(got.status, 200);
        assert!(
            got.body == body,
            "{} bytes back, not the {} sent",
            got.body.len(),
            body.len()
        );
    }
    assert!(metric(&node, "janus_uk_frames_sent_total") > 3 * 600);
}

/// 64 client connections are open at once while one client has sent half a request and stalls:
/// every complete request is answered (each connection is its own task), and the stalled one is
/// answered once it completes its head (or gets the codec's 408 if that took longer than the 10 s
/// head timeout). Each client sends right after connecting: QEMU's user networking accepts host
/// connections slowly (its forwarding socket has a backlog of one), so opening 64 connections
/// first and only then sending would leave the early ones idle past the head timeout.
#[test]
fn many_connections_and_a_stalled_client() {
    if !need_kvm("many_connections_and_a_stalled_client") {
        return;
    }
    let node = start("hello", Machine::Microvm, Accel::Kvm);
    let mut stalled = TcpStream::connect(node.listen).expect("connect");
    stalled
        .write_all(b"GET /echo?msg=slow HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let started = std::time::Instant::now();
    let mut conns: Vec<TcpStream> = Vec::new();
    for i in 0..64 {
        let mut c = TcpStream::connect(node.listen).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(c, "GET /echo?msg=c{i} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        conns.push(c);
    }
    // All 64 connections are still open (keep-alive) while their answers are read.
    for (i, c) in conns.iter_mut().enumerate() {
        let reply = client::read_response(c, &mut Vec::new(), false).expect("response");
        assert_eq!(
            (reply.status, reply.text()),
            (200, format!("c{i}")),
            "connection {i}; console:\n{}",
            node.output()
        );
    }
    let waited = started.elapsed();
    stalled.write_all(b"\r\n").expect("write");
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let reply = client::read_response(&mut stalled, &mut Vec::new(), false).expect("response");
    if waited < Duration::from_secs(9) {
        assert_eq!((reply.status, reply.text()), (200, "slow".to_string()));
    } else {
        assert!(
            reply.status == 200 || reply.status == 408,
            "{}",
            reply.status
        );
    }
    assert_eq!(get(node.listen, "/", &[]).status, 200);
}

/// Polls `metric` until `ok` holds (or panics with the last value after `secs`).
fn wait_metric(node: &Node, name: &str, secs: u64, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let v = metric(node, name);
        if ok(v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {v}; console:\n{}",
            node.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One slow handler (faulty's `/wait`, which polls the store until a key exists) does not hold up
/// other connections; clients that leave while their handler still runs take the handler, its
/// task and its socket with them; a client that stops reading an answer is cut off after the
/// write timeout.
#[test]
fn slow_handlers_gone_clients_and_stalled_readers() {
    let node = start("faulty", Machine::Microvm, Accel::Auto);
    let base_tasks = metric(&node, "janus_uk_tasks");
    let base_sockets = metric(&node, "janus_uk_tcp_sockets");

    let mut slow = TcpStream::connect(node.listen).expect("connect");
    slow.write_all(b"GET /wait?key=go HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    for i in 0..5 {
        let r = client::request(node.listen, "PUT", &format!("/kv/x{i}"), &[], b"v").expect("put");
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    slow.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        std::io::Read::read(&mut slow, &mut byte).is_err(),
        "/wait answered before its key existed"
    );
    client::request(node.listen, "PUT", "/kv/go", &[], b"yes").expect("put");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reply = client::read_response(&mut slow, &mut Vec::new(), false).expect("answer");
    assert_eq!((reply.status, reply.text()), (200, "yes".to_string()));
    drop(slow);

    // 20 clients whose handlers would wait forever, then leave.
    let gone: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(node.listen).expect("connect");
            c.write_all(b"GET /wait?key=never HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            c
        })
        .collect();
    wait_metric(&node, "janus_uk_tasks", 30, |t| t >= base_tasks + 20);
    drop(gone);
    wait_metric(&node, "janus_uk_requests_abandoned_total", 30, |n| n == 20);
    wait_metric(&node, "janus_uk_tasks", 30, |t| t == base_tasks);
    wait_metric(&node, "janus_uk_tcp_sockets", 30, |n| n <= base_sockets);

    // A client that asks for 40 large answers and reads none of them.
    let big = vec![b'b'; 900_000];
    let r = client::request(node.listen, "PUT", "/kv/big", &[], &big).expect("put");
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let mut stuck = TcpStream::connect(node.listen).expect("connect");
    stuck
        .write_all(
            b"GET /kv/big HTTP/1.1\r\nHost: x\r\n\r\n"
                .repeat(40)
                .as_slice(),
        )
        .expect("write");
    wait_metric(&node, "janus_uk_write_timeouts_total", 90, |n| n == 1);
    wait_metric(&node, "janus_uk_tasks", 30, |t| t == base_tasks);
    wait_metric(&node, "janus_uk_tcp_sockets", 30, |n| n <= base_sockets);
    drop(stuck);
    assert_eq!(get(node.listen, "/kv/go", &[]).text(), "yes");
}

/// Hostile input gets the codec's status codes, and the node keeps serving.
#[test]
fn bad_input_gets_clear_errors() {
    let node = start("hello", Machine::Microvm, Accel::Auto);
    let t = Duration::from_secs(10);
    let garbage = client::send_raw(node.listen, b"\x00\x01garbage\r\n\r\n", t).expect("answered");
    assert_eq!(garbage.status, 400);
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 16 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        client::send_raw(node.listen, &huge, t)
            .expect("answered")
            .status,
        431
    );
    let too_long = b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n";
    assert_eq!(
        client::send_raw(node.listen, too_long, t)
            .expect("answered")
            .status,
        413
    );
    assert_eq!(get(node.listen, "/", &[]).status, 200);
    let metrics = node.admin("GET", "/metrics", b"").expect("metrics").text();
    assert!(
        metrics.contains("janus_requests_total{status=\"431\"} 1"),
        "{metrics}"
    );
}

/// kv's state through the admin API: snapshots as of a sequence number, a corrupt snapshot is
/// refused with the state unchanged, and a good one restores.
#[test]
fn state_snapshots_and_restore() {
    let node = start("kv", Machine::Microvm, Accel::Auto);
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        let r = client::request(node.listen, "PUT", &format!("/kv/{k}"), &[], v.as_bytes())
            .expect("put");
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    let r = get(node.listen, "/kv/a", &[]);
    assert_eq!(r.header("x-janus-state-seq"), Some("3"));
    let now = node.admin("GET", "/state", b"").expect("state");
    assert_eq!(now.status, 200);
    assert_eq!(now.header("x-janus-state-seq"), Some("3"));
    let at1 = node.admin("GET", "/state?seq=1", b"").expect("state at 1");
    assert_eq!(at1.status, 200);
    assert_ne!(at1.body, now.body);
    assert_eq!(
        node.admin("GET", "/state?seq=9", b"")
            .expect("future")
            .status,
        400
    );
    let mut corrupt = now.body.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        node.admin("PUT", "/state", &corrupt).expect("put").status,
        400
    );
    assert_eq!(
        node.admin("PUT", "/state", &now.body[..now.body.len() / 2])
            .expect("put")
            .status,
        400
    );
    assert_eq!(
        get(node.listen, "/kv/c", &[]).status,
        200,
        "state unchanged"
    );
    assert_eq!(
        node.admin("PUT", "/state", &at1.body)
            .expect("restore")
            .status,
        204
    );
    assert_eq!(
        get(node.listen, "/kv/c", &[]).status,
        404,
        "state as of seq 1"
    );
    assert_eq!(get(node.listen, "/kv/a", &[]).status, 200);
}

/// A 10 MiB state mirrors into and out of a unikernel byte for byte (the store holds 16 MiB; the
/// service listener's 1 MiB body limit does not apply to the admin port's `PUT /state`).
#[test]
fn ten_mib_state_in_and_out() {
    let node = start("kv", Machine::Microvm, Accel::Auto);
    // In: a snapshot made here, of 10 values of 1,000,000 bytes plus 5,000 small ones.
    let mut entries = std::collections::BTreeMap::new();
    for i in 0..10u32 {
        let v: Vec<u8> = (0..1_000_000u32)
            .map(|j| (j.wrapping_mul(2_654_435_761) ^ i) as u8)
            .collect();
        entries.insert(format!("big{i}"), v);
    }
    for i in 0..5_000u32 {
        entries.insert(format!("small{i:05}"), i.to_be_bytes().to_vec());
    }
    let snapshot = runtime_abi::store::encode_snapshot(1234, &entries);
    assert!(snapshot.len() > 10_000_000);
    let put = node.admin("PUT", "/state", &snapshot).expect("put state");
    assert_eq!(put.status, 204, "{}", put.text());
    assert_eq!(put.header("x-janus-state-seq"), Some("1234"));
    let big7 = get(node.listen, "/kv/big7", &[]);
    assert!(
        big7.body == entries["big7"],
        "the service reads the restored value"
    );
    let back = node.admin("GET", "/state", b"").expect("get state");
    assert_eq!(back.status, 200);
    assert!(
        back.body == snapshot,
        "{} bytes back, not the {} put",
        back.body.len(),
        snapshot.len()
    );

    // Out: a state the service wrote (one more value) comes out as exactly that state.
    let v: Vec<u8> = (0..900_000u32).map(|j| (j % 251) as u8).collect();
    let r = client::request(node.listen, "PUT", "/kv/fresh", &[], &v).expect("put");
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let out = node.admin("GET", "/state", b"").expect("get state");
    assert_eq!(out.header("x-janus-state-seq"), Some("1235"));
    entries.insert("fresh".into(), v);
    assert!(
        out.body == runtime_abi::store::encode_snapshot(1235, &entries),
        "the state out differs from the state in plus the write ({} bytes)",
        out.body.len()
    );
    // Over the cap: refused with 413, the state unchanged.
    let cap = 16 * 2 * 1024 * 1024 + 1024 * 1024;
    let head = format!(
        "PUT /state HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        node.token,
        cap + 1
    );
    let refused =
        client::send_raw(node.admin, head.as_bytes(), Duration::from_secs(10)).expect("answered");
    assert_eq!(refused.status, 413);
    assert_eq!(get(node.listen, "/kv/fresh", &[]).status, 200);
}

/// faulty's bug 2 on a uk node: the VM prints the panic report with the in-flight trace id and
/// the state as of the request's start, then exits with the documented status. The dump restores
/// into a fresh node, which reproduces the fault.
#[test]
fn panic_reports_and_exits_with_state_dump() {
    let mut node = start("faulty", Machine::Microvm, Accel::Auto);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    for i in 1..=7 {
        let r =
            client::request(node.listen, "POST", "/counter/visits/incr", &[], b"").expect("incr");
        assert_eq!(r.status, 200, "increment {i}: {}", r.text());
    }
    let fatal = client::request(
        node.listen,
        "POST",
        "/counter/visits/incr",
        &[("x-janus-trace-id", trace)],
        b"",
    );
    assert!(fatal.is_err(), "the VM stops instead of answering");
    let status = node.wait_exit(Duration::from_secs(30)).expect("VM exits");
    assert_eq!(status.code(), Some(EXIT_PANIC), "{}", node.output());
    let out = node.output();
    assert!(out.contains("JANUS-PANIC panicked at"), "{out}");
    assert!(out.contains("index out of bounds"), "{out}");
    assert!(
        out.contains("INFO ") && out.contains("counter=\"visits\""),
        "info events on the console by default: {out}"
    );
    assert!(
        out.contains(&format!("JANUS-PANIC trace_id={trace}")),
        "{out}"
    );
    let state_line = out
        .lines()
        .find(|l| l.starts_with("JANUS-STATE "))
        .expect("state dump");
    let (seq, snapshot) = janus::supervisor::parse_state_line(state_line).expect("parsable dump");
    assert_eq!(seq, 7, "state as of the start of the faulting request");

    // A fresh node restored from the dump hits the same fault on the same request.
    let mut fresh = start("faulty", Machine::Microvm, Accel::Auto);
    assert_eq!(
        fresh
            .admin("PUT", "/state", &snapshot)
            .expect("restore")
            .status,
        204
    );
    let r = get(fresh.listen, "/kv/counter/visits", &[]);
    assert_eq!(r.header("x-janus-state-seq"), Some("7"));
    let again = client::request(fresh.listen, "POST", "/counter/visits/incr", &[], b"");
    assert!(again.is_err());
    let status = fresh.wait_exit(Duration::from_secs(30)).expect("VM exits");
    assert_eq!(status.code(), Some(EXIT_PANIC));
}

/// A state larger than one console line's worth is dumped at the panic as numbered parts; the
/// supervisor's reader reassembles exactly the state the admin API gave for that sequence number.
#[test]
fn a_large_state_is_dumped_in_parts() {
    let mut node = start("faulty", Machine::Microvm, Accel::Auto);
    let big: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = client::request(node.listen, "PUT", "/kv/big", &[], &big).expect("put");
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    for i in 1..=7 {
        let r =
            client::request(node.listen, "POST", "/counter/visits/incr", &[], b"").expect("incr");
        assert_eq!(r.status, 200, "increment {i}: {}", r.text());
    }
    let expected = node.admin("GET", "/state?seq=8", b"").expect("state");
    assert_eq!(expected.status, 200);
    assert!(expected.body.len() > 400_000);
    let fatal = client::request(node.listen, "POST", "/counter/visits/incr", &[], b"");
    assert!(fatal.is_err(), "the VM stops instead of answering");
    let status = node.wait_exit(Duration::from_secs(120)).expect("VM exits");
    assert_eq!(status.code(), Some(EXIT_PANIC));
    let out = node.output();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("JANUS-STATE-PART seq=8 "))
            .count()
            >= 8,
        "a 400 kB state in parts of 48 KiB"
    );
    let (seq, snapshot) = janus::supervisor::parse_state_dump(&lines).expect("reassembled");
    assert_eq!(seq, 8);
    assert!(
        snapshot == expected.body,
        "{} bytes reassembled, {} expected",
        snapshot.len(),
        expected.body.len()
    );
}

/// `--log-level` reaches the kernel's console: at `warn` the service's info events are not
/// printed, while the panic report still is.
#[test]
fn log_level_reaches_the_console() {
    let a = artifact("faulty", Flavor::Uk);
    let o = NodeOpts {
        log_level: Some("warn".into()),
        ..opts(Machine::Microvm, Accel::Auto)
    };
    let mut node = Node::start(&a, o).expect("the image boots and answers");
    let r = get(node.listen, "/div?a=6&b=3", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        get_err(node.listen, "/div?a=1&b=0"),
        "the VM stops instead of answering"
    );
    let status = node.wait_exit(Duration::from_secs(30)).expect("VM exits");
    assert_eq!(status.code(), Some(EXIT_PANIC), "{}", node.output());
    let out = node.output();
    assert!(out.contains("divide by zero"), "{out}");
    assert!(
        !out.contains("dividing"),
        "an info event printed at warn: {out}"
    );

    let o = NodeOpts {
        log_level: Some("info,faulty=debug".into()),
        ..opts(Machine::Microvm, Accel::Auto)
    };
    let Err(e) = Node::start(&a, o) else {
        panic!("a tracing filter is not a uk level, yet the node started");
    };
    assert!(format!("{e:#}").contains("one level"), "{e:#}");
}

fn get_err(addr: SocketAddr, target: &str) -> bool {
    client::get(addr, target, &[]).is_err()
}

/// The image boots and serves in the documented minimum of guest memory.
#[test]
fn serves_with_minimum_memory() {
    let a = artifact("hello", Flavor::Uk);
    let mut o = opts(Machine::Microvm, Accel::Auto);
    o.memory_mib = MIN_MEMORY_MIB;
    let node = Node::start(&a, o).expect("boots with the minimum memory");
    assert_eq!(get(node.listen, "/", &[]).status, 200);
    // The heap is what the image leaves of 2 MiB, plus conventional memory below 1 MiB.
    let out = node.output();
    let heap_kib: u64 = out
        .split("heap ")
        .nth(1)
        .and_then(|r| r.split(" KiB").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no heap size on the console:\n{out}"));
    assert!(
        (512..2048).contains(&heap_kib),
        "heap {heap_kib} KiB in {MIN_MEMORY_MIB} MiB"
    );
    assert_eq!(get(node.listen, "/echo?msg=again", &[]).text(), "again");
}

/// The modern virtio-mmio transport (v2: Firecracker's, cloud-hypervisor's) works as the legacy
/// one QEMU's microvm gives by default: QEMU is told to offer v2 devices, and the node serves,
/// and a request and an answer of several frames each pass intact.
#[test]
fn microvm_modern_virtio_mmio_serves_hello() {
    let a = artifact("hello", Flavor::Uk);
    let listen = janus_integration::free_addr();
    let run = janus::flavor::uk::UkRunOpts {
        listen,
        admin: None,
        admin_token: String::new(),
        node_id: "modern".into(),
        upstreams: Vec::new(),
        config: Vec::new(),
        memory_mib: 64,
        machine: Machine::Microvm,
        accel: Accel::Auto,
        log_level: None,
        secret_dir: std::env::temp_dir(),
        gdbstub: None,
    };
    let mut cmd = janus::flavor::uk::qemu_command(&a.path, &run).expect("QEMU command");
    cmd.args(["-global", "virtio-mmio.force-legacy=false"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("QEMU starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        if let Ok(r) = client::get(listen, "/", &[])
            && r.status == 200
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().ok().flatten().is_none(),
            "the node never answered over modern virtio-mmio"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(reply.text().starts_with("Hello from Janus"));
    let msg = "m".repeat(6000);
    let echo = get(listen, &format!("/echo?msg={msg}"), &[]);
    assert_eq!(echo.text(), msg);
    let _ = child.kill();
    let out = child.wait_with_output().expect("QEMU output");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("virtio-mmio v2@"), "{console}");
}

//! Time-travel debugging of a unikernel fault, end to end as a user runs it: a cluster (1 unikernel
//! stable node, 1 debug process node, the router), faulty's input bug (`/div?b=0`) on the stable
//! node, `janus faults record ID` (QEMU record mode, TCG), then `janus faults timetravel ID --exec`
//! twice: stopped at the panic handler, `bt` names the service's function with file and line,
//! `reverse-stepi` walks back instruction by instruction, `reverse-continue` with no breakpoint
//! behind ends with a message, `reverse-continue` to a breakpoint in the service function stops
//! there with its source line, and both replays print the same console.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, text};
use janus_integration::child::free_addr;
use janus_integration::client;
use serde_json::Value;

/// 1 unikernel stable node, 1 debug node, the router.
fn up() -> Cluster {
    Cluster::up(
        &format!("tt-{}", std::process::id()),
        &format!(
            r#"service = "{svc}"
[stable]
count = 1
memory_mib = 64
[debug]
count = 1
spare = 0
[router]
listen = "{router}"
admin = "{admin}"
request_timeout_ms = 1500
# The request goes to the unikernel (the fault to record), its retry to the debug node.
debug_weight = 0
"#,
            svc = janus_integration::sample_dir("faulty").display(),
            router = free_addr(),
            admin = free_addr(),
        ),
    )
}

/// The `#N ... in FUNCTION (...) at FILE:LINE` frames of gdb's `bt` output.
fn frames(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with('#')).collect()
}

/// The console the replay printed (after the marker `--console` prints).
fn console(out: &str) -> &str {
    out.split_once("---- replayed guest console ----")
        .map(|(_, c)| c)
        .unwrap_or("")
}

#[test]
fn record_replay_and_reverse_step_a_unikernel_panic() {
    let c = up();
    // The unikernel's panic, captured with the stable node named: until the router sees stable-0
    // healthy (a loaded machine boots it late) the request goes to the debug node instead.
    c.wait_running("stable-0", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let _ = client::get(c.router(), "/div?a=1&b=0", &[]);
        let on_stable = |f: &Value| f["kind"] != "debug_fault" && f["stable_node"] == "stable-0";
        if let Some(id) = c.wait_fault(Duration::from_millis(500), on_stable) {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no fault of stable-0 recorded: {:?}",
            c.faults_json()
        );
    };
    let sid = id.to_string();

    // Bad input first: an unknown fault, a fault not recorded yet.
    let o = c.faults(&["record", "99999"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no fault 99999"), "{}", text(&o));
    let o = c.faults(&["timetravel", &sid, "--exec", "bt"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("janus faults record {id}")),
        "{}",
        text(&o)
    );

    // Record.
    let o = c.faults(&["record", &sid, "--json"]);
    assert!(o.status.success(), "record failed:\n{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("json report");
    eprintln!("{report:#}");
    assert_eq!(report["reproduced"], true, "{report}");
    let rec = &report["recording"];
    assert!(rec["log_bytes"].as_u64().expect("log size") > 0, "{rec}");
    assert!(
        rec["outcome"]
            .as_str()
            .is_some_and(|l| l.contains("JANUS-EXIT status=33")),
        "{rec}"
    );
    let dir = c.dir.join("faults").join(&sid);
    for part in ["rr.bin", "snapshots.qcow2", "recording.json", "token"] {
        assert!(
            dir.join(part).is_file(),
            "{part} missing in {}",
            dir.display()
        );
    }
    assert!(
        std::fs::read_dir(&dir)
            .expect("fault dir")
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "elf")),
        "no unstripped ELF kept"
    );

    // Time travel, twice: stop at the panic, bt, two reverse steps, bt again.
    let session = || {
        c.faults(&[
            "timetravel",
            &sid,
            "--timeout",
            "60",
            "--console",
            "--exec",
            "bt",
            "--exec",
            "print/x $pc",
            "--exec",
            "reverse-stepi",
            "--exec",
            "reverse-stepi",
            "--exec",
            "print/x $pc",
            "--exec",
            "bt",
            // No breakpoint lies in the past (the panic handler's is ahead now): bounded, says so.
            "--exec",
            "reverse-continue",
            "--exec",
            "janus-icount",
            // A breakpoint in the service: reverse-continue stops there, with its source line.
            "--exec",
            "break janus_samples_faulty::div",
            "--exec",
            "reverse-continue",
            "--exec",
            "janus-icount",
            "--exec",
            "bt 1",
        ])
    };
    let first = session();
    let out = text(&first);
    assert!(first.status.success(), "timetravel failed:\n{out}");
    eprintln!("{out}");
    // At the panic handler: the backtrace names the service's function with its file and line.
    let service_frame = frames(&out)
        .into_iter()
        .find(|l| l.contains("janus_samples_faulty::div"))
        .unwrap_or_else(|| panic!("no janus_samples_faulty::div frame:\n{out}"));
    let at = service_frame.rsplit(" at ").next().unwrap_or("");
    let line: Option<u32> = at.rsplit(':').next().and_then(|n| n.trim().parse().ok());
    assert!(
        at.contains("samples/faulty/src/lib.rs:") && line.is_some_and(|n| n > 0),
        "no file:line in {service_frame}"
    );
    assert!(
        out.contains("Breakpoint 1,"),
        "not stopped at the panic handler:\n{out}"
    );
    // Two reverse steps moved the program counter back, and the service is still on the stack.
    let pcs: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split_once("= 0x").map(|(_, h)| h.trim()))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .collect();
    assert_eq!(pcs.len(), 2, "{out}");
    assert_ne!(pcs[0], pcs[1], "reverse-stepi did not move:\n{out}");
    assert!(pcs[1] < pcs[0], "reverse-stepi did not step back:\n{out}");
    assert!(
        frames(&out)
            .iter()
            .filter(|l| l.contains("janus_samples_faulty::div"))
            .count()
            >= 2,
        "no service frame after the reverse steps:\n{out}"
    );
    // reverse-continue with no breakpoint behind: a clear message, and the replay stays put.
    assert!(
        out.contains("No breakpoint or watchpoint was hit between the start of the recording"),
        "{out}"
    );
    let icounts: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("icount "))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert_eq!(icounts.len(), 2, "{out}");
    // reverse-continue to the breakpoint in the service function: stopped there, earlier in
    // the recording, with file and line.
    let stop = out
        .lines()
        .find(|l| l.starts_with("Breakpoint 3, janus_samples_faulty::div"))
        .unwrap_or_else(|| panic!("reverse-continue did not stop in div:\n{out}"));
    assert!(stop.contains("samples/faulty/src/lib.rs:"), "{stop}");
    assert!(
        icounts[1] < icounts[0],
        "reverse-continue did not go back: {icounts:?}\n{out}"
    );
    assert!(
        frames(&out)
            .last()
            .is_some_and(|l| l.contains("janus_samples_faulty::div")),
        "{out}"
    );
    let console_1 = console(&out).to_string();
    assert!(
        console_1.contains("attempt to divide by zero"),
        "the replay did not reach the panic:\n{console_1}"
    );

    let second = session();
    let out2 = text(&second);
    assert!(second.status.success(), "second timetravel failed:\n{out2}");
    assert_eq!(
        console(&out2),
        console_1,
        "two replays of one recording printed different consoles"
    );
}

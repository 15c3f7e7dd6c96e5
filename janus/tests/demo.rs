//! The README's main command, `janus demo`, end to end: it must capture and reproduce every injected
//! fault, show that the state-triggered one is not reproduced without the mirrored state, and leave
//! nothing running.

use std::process::Command;

#[test]
fn janus_demo_captures_and_reproduces_every_injected_fault() {
    let janus = env!("CARGO_BIN_EXE_janus");
    let o = Command::new(janus)
        .args(["demo", "--json"])
        .output()
        .expect("janus demo runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "janus demo failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("every injected fault was captured and reproduced"),
        "{out}"
    );
    let json_start = out.rfind("\n{").expect("the --json summary");
    let summary: serde_json::Value =
        serde_json::from_str(&out[json_start..]).expect("summary JSON");
    let bugs = summary["bugs"].as_array().expect("bugs");
    assert_eq!(bugs.len(), 4);
    for b in bugs {
        assert_eq!(b["reproduced"], true, "{b}");
        assert!(b["fault_id"].is_i64(), "{b}");
        assert!(
            b["stable_node"]
                .as_str()
                .is_some_and(|n| n.starts_with("stable-")),
            "the fault happened on a stable node: {b}"
        );
    }
    let state = bugs
        .iter()
        .find(|b| b["bug"] == "state")
        .expect("state bug");
    assert_eq!(state["reproduced_without_state"], false);
    assert_eq!(state["client_errors"], 0, "clients never saw the state bug");
    let wrong = bugs
        .iter()
        .find(|b| b["bug"] == "wrong answer")
        .expect("wrong answer");
    assert_eq!(wrong["client_errors"], 0);
    let state_json = janus::cluster::run_dir("demo").join("state.json");
    assert!(!state_json.exists(), "janus demo tears the cluster down");
}

//! The README's main command, `janus demo`, end to end: every injected fault must end with its
//! expected verdict (the state-triggered one state-dependent, the u8 overflow build-specific: a
//! divergence between a unikernel and its twin, the input and hang bugs reproduced), `/stats` mirrored
//! to the twins at the same seq must not diverge, and nothing may be left running.

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
        out.contains("every injected fault ended as expected"),
        "{out}"
    );
    let json_start = out.rfind("\n{").expect("the --json summary");
    let summary: serde_json::Value =
        serde_json::from_str(&out[json_start..]).expect("summary JSON");
    let bugs = summary["bugs"].as_array().expect("bugs");
    let bug = |name: &str| {
        bugs.iter()
            .find(|b| b["bug"] == name)
            .unwrap_or_else(|| panic!("{name} in {bugs:?}"))
    };
    assert_eq!(bugs.len(), 6);
    for (name, verdict) in [
        ("build", "build_specific"),
        ("state", "state_dependent"),
        ("input", "reproduced"),
        ("hang", "reproduced"),
        ("memory", "reproduced"),
    ] {
        let b = bug(name);
        assert_eq!(b["verdict"], verdict, "{b}");
        assert!(b["fault_id"].is_i64(), "{b}");
        assert!(
            b["stable_node"]
                .as_str()
                .is_some_and(|n| n.starts_with("stable-")),
            "the fault happened on a stable node: {b}"
        );
    }
    // Bug 6 on an 8 MiB unikernel: out of memory there, an allocation failure under the envelope
    // (the unikernel's heap size, below its 8 MiB of guest memory) on the debug build.
    let memory = bug("memory");
    let envelope = memory["envelope_bytes"].as_u64().expect("an envelope");
    assert!(
        envelope > 0 && envelope < 8 * 1024 * 1024,
        "envelope {envelope} is not an 8 MiB unikernel's heap: {memory}"
    );
    assert_eq!(memory["allocation_failure"], true, "{memory}");
    let state = bug("state");
    assert_eq!(state["reproduced_without_state"], false);
    assert_eq!(state["client_errors"], 0, "clients never saw the state bug");
    let shared = bug("shared wrong answer");
    assert!(
        shared["fault_id"].is_null(),
        "/stats at the same seq diverged: {shared}"
    );
    assert_eq!(shared["client_errors"], 0);
    assert_eq!(
        bug("build")["client_errors"],
        0,
        "the unikernel's wrong answer is silent"
    );
    let state_json = janus::cluster::run_dir("demo").join("state.json");
    assert!(!state_json.exists(), "janus demo tears the cluster down");
}

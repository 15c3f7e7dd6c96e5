//! The three samples' conformance tables against the unix build, started as real child processes.

use janus::Flavor;
use janus_integration::conformance::run_sample;

fn conformant(sample: &str) {
    let failures = run_sample(sample, Flavor::Unix).expect("node starts and the table runs");
    assert!(
        failures.is_empty(),
        "{sample} (unix) is not conformant:\n{}",
        failures.join("\n")
    );
}

#[test]
fn hello_unix() {
    conformant("hello");
}

#[test]
fn kv_unix() {
    conformant("kv");
}

#[test]
fn faulty_unix() {
    conformant("faulty");
}

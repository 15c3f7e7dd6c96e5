//! One table, two builds: each sample's `conformance.toml` runs against its unix build (a real child
//! process) and its unikernel image (booted under QEMU, KVM when /dev/kvm opens, else TCG), through the
//! same driver; any difference is a failure.

use janus::Flavor;
use janus_integration::conformance::run_sample;

fn conformant(sample: &str, flavor: Flavor) {
    let failures = run_sample(sample, flavor).expect("the node starts and the table runs");
    assert!(
        failures.is_empty(),
        "{sample} ({flavor}) is not conformant:\n{}",
        failures.join("\n")
    );
}

#[test]
fn hello_unix() {
    conformant("hello", Flavor::Unix);
}

#[test]
fn hello_uk() {
    conformant("hello", Flavor::Uk);
}

#[test]
fn kv_unix() {
    conformant("kv", Flavor::Unix);
}

#[test]
fn kv_uk() {
    conformant("kv", Flavor::Uk);
}

#[test]
fn faulty_unix() {
    conformant("faulty", Flavor::Unix);
}

#[test]
fn faulty_uk() {
    conformant("faulty", Flavor::Uk);
}

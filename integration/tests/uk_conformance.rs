//! The three samples' conformance tables against the unikernel build: each sample is built with
//! `janus build --flavor uk` and booted under QEMU (microvm, KVM when /dev/kvm opens, else TCG).

use janus::Flavor;
use janus_integration::conformance::run_sample;

fn conformant(sample: &str) {
    let failures = run_sample(sample, Flavor::Uk).expect("image builds, boots and the table runs");
    assert!(
        failures.is_empty(),
        "{sample} (uk) is not conformant:\n{}",
        failures.join("\n")
    );
}

#[test]
fn hello_uk() {
    conformant("hello");
}

#[test]
fn kv_uk() {
    conformant("kv");
}

#[test]
fn faulty_uk() {
    conformant("faulty");
}

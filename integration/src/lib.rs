//! Test support for Janus's end-to-end tests: real child processes and VMs ([`child`]), a raw HTTP/1.1
//! client ([`client`]) and the conformance driver ([`conformance`]) that runs one table against
//! either build.
#![forbid(unsafe_code)]

pub mod child;
pub mod client;
pub mod conformance;

pub use child::{Node, artifact, free_addr, sample_dir};

/// A finished command's stdout then stderr, as text (for assertion messages).
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

//! The `janus` command-line tool as a library: the integration tests and the CLI share it.
//!
//! - [`service`]: reads a service crate (name, library, service type) and refuses one that is not
//!   `#![no_std]`.
//! - [`client`]: the blocking HTTP/1.1 client (ureq) for health checks, admin calls and replays.
//! - [`up`] (`janus up/ps/logs/down`), [`faults`] (`janus faults ...`): one file per command or job.
//! - [`build`]: generates the per-flavour wrapper crate, builds it, writes the artifact and the
//!   requirements manifest next to it.
//! - [`flavor`]: what differs between the unix process and the unikernel image.
//! - [`launch`]: the node options both flavours take, and how `janus run` starts one.
//! - [`deploy`]: `janus deploy --emit kubernetes|nomad DIR`: manifests and jobs written offline.
//! - [`evidence`]: the unikernel's console and `janus_uk_*` counters a build-specific verdict attaches.
//! - [`secret`]: admin tokens from the OS's random source, and the private files that hold them.
#![forbid(unsafe_code)]

pub mod build;
pub mod client;
pub mod cluster;
pub mod conformance;
pub mod debug;
pub mod demo;
pub mod deploy;
pub mod evidence;
pub mod faults;
pub mod flavor;
pub mod launch;
pub mod libvirt;
pub mod progress;
pub mod secret;
pub mod service;
pub mod supervisor;
pub mod top;
pub mod up;

pub use build::{Artifact, Flavor, build};
pub use launch::NodeOpts;
pub use service::ServiceCrate;

use std::path::PathBuf;

/// The Janus source tree (the workspace holding runtime-abi and the backends): `$JANUS_HOME`, else
/// the tree this binary was built from.
pub fn janus_home() -> PathBuf {
    match std::env::var_os("JANUS_HOME") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
    }
}

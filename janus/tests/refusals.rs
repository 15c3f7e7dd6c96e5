//! What a service crate cannot do, shown with real builds: use std (refused by `janus build`, or does
//! not compile), or open an upstream it did not declare (the node refuses to start).

use std::path::{Path, PathBuf};
use std::process::Command;

fn janus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_janus"))
}

/// Writes a service crate named `name` with `lib` as its src/lib.rs.
fn fixture(name: &str, lib: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("janus-fixture-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    let abi = janus::janus_home().join("runtime-abi");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [package.metadata.janus]\nservice = \"Svc\"\n\n\
             [dependencies]\nruntime-abi = {{ path = {abi:?} }}\n\n[workspace]\n"
        ),
    )
    .expect("write Cargo.toml");
    std::fs::write(dir.join("src/lib.rs"), lib).expect("write lib.rs");
    dir
}

/// `janus build`: (success, stdout, stdout + stderr).
fn build_out(dir: &Path) -> (bool, String, String) {
    let o = Command::new(janus_bin())
        .args(["build", dir.to_str().expect("utf8"), "--flavor", "unix"])
        .output()
        .expect("janus runs");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    (o.status.success(), stdout, all)
}

fn build(dir: &Path) -> (bool, String) {
    let (ok, _, all) = build_out(dir);
    (ok, all)
}

const SERVICE: &str = r#"
use runtime_abi::{Capabilities, InitError, Listener, Manifest, Request, Response, Service, StatusCode};
pub struct Svc;
impl Service for Svc {
    const MANIFEST: Manifest = Manifest {
        name: "fixture", version: "0.1.0", listener: Listener::HTTP,
        upstreams: &["declared"], store: None, config: &[],
    };
    fn new(caps: Capabilities) -> Result<Self, InitError> { INIT(caps) }
    async fn handle(&self, _req: Request) -> Response { Response::text(StatusCode::OK, "ok") }
}
"#;

#[test]
fn a_service_without_no_std_is_refused_by_janus_build() {
    let dir = fixture(
        "uses-std-crate",
        &format!("{SERVICE}\nfn INIT(_c: Capabilities) -> Result<Svc, InitError> {{ Ok(Svc) }}\n"),
    );
    let (ok, out) = build(&dir);
    assert!(!ok, "built a service that is not #![no_std]");
    assert!(out.contains("is not #![no_std]"), "{out}");
}

#[test]
fn extern_crate_std_is_refused_by_janus_build() {
    let dir = fixture(
        "extern-std",
        &format!(
            "#![no_std]\nextern crate std;\n{SERVICE}\n\
             fn INIT(_c: Capabilities) -> Result<Svc, InitError> {{ Ok(Svc) }}\n"
        ),
    );
    let (ok, out) = build(&dir);
    assert!(!ok);
    assert!(out.contains("extern crate std"), "{out}");
}

#[test]
fn reaching_for_std_in_a_no_std_service_does_not_compile() {
    let dir = fixture(
        "std-path",
        &format!(
            "#![no_std]\n{SERVICE}\n#[allow(non_snake_case)]\n\
             fn INIT(_c: Capabilities) -> Result<Svc, InitError> {{\n\
                 let _ = std::fs::read(\"/etc/passwd\");\n    Ok(Svc)\n}}\n"
        ),
    );
    let (ok, out) = build(&dir);
    assert!(!ok, "a no_std service compiled a call into std");
    assert!(out.contains("std"), "{out}");
}

#[test]
fn an_undeclared_upstream_is_refused_at_start() {
    let dir = fixture(
        "undeclared-upstream",
        &format!(
            "#![no_std]\n{SERVICE}\n#[allow(non_snake_case)]\n\
             fn INIT(caps: Capabilities) -> Result<Svc, InitError> {{\n\
                 caps.upstream(\"declared\")?;\n    caps.upstream(\"payments\")?;\n    Ok(Svc)\n}}\n"
        ),
    );
    let (ok, stdout, out) = build_out(&dir);
    assert!(ok, "the fixture builds: {out}");
    let bin = stdout
        .lines()
        .last()
        .expect("artifact path")
        .trim()
        .to_string();
    let listen = janus_integration::free_addr().to_string();
    let admin = janus_integration::free_addr().to_string();
    let o = Command::new(&bin)
        .args(["--listen", &listen, "--admin", &admin, "--admin-token", "t"])
        .output()
        .expect("node runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the node started although the service asked for an undeclared upstream"
    );
    assert!(err.contains("'payments' is not declared"), "{err}");
}

/// `--profile` chooses the unix build's semantics only: the unikernel image keeps release semantics,
/// so asking it for another profile is refused by name before anything is built.
#[test]
fn a_profile_for_the_unikernel_build_is_refused() {
    let o = Command::new(janus_bin())
        .args([
            "build",
            "samples/faulty",
            "--flavor",
            "uk",
            "--profile",
            "checked",
        ])
        .output()
        .expect("janus runs");
    let all = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        all.contains("--profile checked is for --flavor unix"),
        "{all}"
    );
}

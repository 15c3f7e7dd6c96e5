//! `janus run` keeps the admin token off every command line: the node it becomes (a unix process,
//! or QEMU running the unikernel) is checked through `/proc/<pid>/cmdline` while it serves the admin
//! API with that token. (`janus up` is checked the same way in `cluster.rs`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use janus_integration::child::free_addr;

fn janus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_janus"))
}

/// Kills the node on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls the admin `/health` with `token` until it answers 200 (the token reached the node).
fn wait_admin(node: &mut Running, admin: SocketAddr, token: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let auth = format!("Bearer {token}");
    loop {
        if let Some(st) = node.0.try_wait().expect("try_wait") {
            panic!("janus run exited ({st}) before its admin API answered");
        }
        let r = janus_integration::client::request(
            admin,
            "GET",
            "/health",
            &[("authorization", &auth)],
            b"",
        );
        if r.is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "admin /health never answered 200 with the token"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn proc_file(pid: u32, name: &str) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/{name}")).expect("/proc readable");
    String::from_utf8_lossy(&bytes).replace('\0', " ")
}

/// Starts `janus run samples/hello --flavor <flavor>` with the token given as `how` (the
/// `--admin-token` flag a user types, or `JANUS_ADMIN_TOKEN`), and checks the running node.
fn token_stays_off_the_command_line(flavor: &str, by_flag: bool) {
    let token = janus::secret::random_token().expect("entropy");
    let listen = free_addr();
    let admin = free_addr();
    let sample = janus_integration::sample_dir("hello");
    let mut cmd = Command::new(janus_bin());
    cmd.args(["run", sample.to_str().expect("utf8"), "--flavor", flavor])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--node-id", &format!("secrets-{}", listen.port())])
        .env_remove("JANUS_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if by_flag {
        cmd.args(["--admin-token", &token]);
    } else {
        cmd.env("JANUS_ADMIN_TOKEN", &token);
    }
    let mut node = Running(cmd.spawn().expect("janus run starts"));
    wait_admin(&mut node, admin, &token, Duration::from_secs(300));
    // `janus run` replaced itself with the node: this pid is the node (or QEMU) now.
    let pid = node.0.id();
    let cmdline = proc_file(pid, "cmdline");
    let program = if flavor == "uk" {
        "qemu-system-x86_64"
    } else {
        "hello-unix"
    };
    assert!(cmdline.contains(program), "not the node: {cmdline}");
    assert!(
        !cmdline.contains(&token),
        "the admin token is on the command line: {cmdline}"
    );
    if flavor == "uk" {
        assert!(cmdline.contains("name=opt/janus/token,file="), "{cmdline}");
        // QEMU does not need it in its environment either.
        assert!(!proc_file(pid, "environ").contains(&token));
    }
}

#[test]
fn janus_run_unix_passes_a_typed_token_through_the_environment() {
    token_stays_off_the_command_line("unix", true);
}

#[test]
fn janus_run_uk_passes_the_token_through_fw_cfg() {
    token_stays_off_the_command_line("uk", false);
}

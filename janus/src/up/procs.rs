//! A cluster's processes as every command sees them: free ports, admin calls with the bearer token,
//! liveness of a pid.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::client;
use crate::supervisor::ProcSpec;

/// A free loopback address.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
pub(crate) fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}
/// Whether a process's admin `/health` answers 200.
pub fn healthy(p: &ProcSpec) -> bool {
    admin_get(p, "/health").is_ok_and(|r| r.status == 200)
}

/// An admin GET with the process's bearer token.
pub fn admin_get(p: &ProcSpec, path: &str) -> anyhow::Result<client::Reply> {
    let auth = format!("Bearer {}", p.token);
    client::request_timeout(
        p.admin,
        "GET",
        path,
        &[("authorization", &auth)],
        b"",
        Duration::from_millis(1500),
    )
}
/// Whether a pid is alive.
pub fn pid_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}
/// Whether `pid` has exited and waits to be reaped by its parent.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

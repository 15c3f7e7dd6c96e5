//! `janus logs NODE [--follow]`.

use std::time::Duration;

use anyhow::bail;

use crate::cluster::run_dir;
use crate::supervisor::ClusterState;

/// `janus logs NODE [--follow]`.
pub fn logs(cluster: &str, node: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    let dir = run_dir(cluster);
    let state = ClusterState::read(&dir)?;
    if state.proc(node).is_none() {
        let ids: Vec<&str> = state.procs.iter().map(|p| p.spec.id.as_str()).collect();
        bail!(
            "no node '{node}' in cluster '{cluster}' (nodes: {})",
            ids.join(", ")
        );
    }
    for l in crate::supervisor::tail_log(&dir, node, lines)? {
        println!("{l}");
    }
    if !follow {
        return Ok(());
    }
    let path = dir.join("logs").join(format!("{node}.log"));
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // rotated
        }
        if len > pos {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(pos))?;
            let mut buf = String::new();
            f.read_to_string(&mut buf)?;
            print!("{buf}");
            pos = len;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

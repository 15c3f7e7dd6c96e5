//! `janus faults export ID --as-test DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::replay::{replayable, request_headers};
use super::state::{MirroredState, resolve_state};
use super::{get, open};
use crate::conformance::{Case, Expect, Req, Table};
use crate::supervisor::ClusterState;

/// `janus faults export ID --as-test DIR`: the captured request, the mirrored state and the expected
/// outcome (no fault; for a divergence, not the captured wrong answer) as a conformance case.
pub fn export(cluster: &str, id: i64, out: &Path) -> anyhow::Result<PathBuf> {
    let (dir, store) = open(cluster)?;
    let f = get(&store, id)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mirrored = resolve_state(&dir, &f)?
        .unwrap_or_else(|| MirroredState::empty("none found (empty state)"));
    std::fs::write(out.join("state.bin"), &mirrored.bytes)?;
    let state = ClusterState::read(&dir).ok();
    let service = state.map(|s| s.service).unwrap_or_default();
    let headers: BTreeMap<String, String> = replayable(&request_headers(&f)).into_iter().collect();
    let divergence = f.summary.kind == "divergence";
    let table = Table {
        service,
        state: Some("state.bin".into()),
        cases: vec![Case {
            name: format!(
                "fault {id}: {} {} ({}, stable {}; state seq {} from {})",
                f.summary.method,
                f.summary.path,
                f.summary.kind,
                f.summary.stable_outcome.as_deref().unwrap_or("-"),
                mirrored
                    .seq
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                mirrored.source,
            ),
            request: Req {
                method: f.summary.method.clone(),
                path: f.summary.path.clone(),
                headers,
                body: String::from_utf8_lossy(&f.request_body).into_owned(),
                ..Req::default()
            },
            expect: Expect {
                no_fault: true,
                not_body: if divergence {
                    f.stable_response_body
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                } else {
                    None
                },
                janus_headers: false,
                ..Expect::default()
            },
        }],
    };
    let path = out.join("case.toml");
    table.save(&path)?;
    Ok(path)
}

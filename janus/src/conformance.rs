//! Conformance tables as data: the format shared by the samples' `conformance.toml`, the driver in
//! the integration crate (which runs a table against a node of either build) and
//! `janus faults export` (which writes a captured fault as a regression case). The format is
//! documented in `integration/src/conformance.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A conformance table.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table {
    /// Service name.
    pub service: String,
    /// Snapshot file (relative to the table) restored before the cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The cases, run in order on one node.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// The request.
    pub request: Req,
    /// What must come back.
    pub expect: Expect,
}

/// A request of a case.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Req {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Body text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Body of N bytes of `x` (for size limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_fill: Option<usize>,
    /// An `x-fill` header of N bytes (for head limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_fill: Option<usize>,
    /// Exact bytes to send instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// The expected answer of a case.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Expect {
    /// Status code (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The answer must not be a fault: no 5xx, no `x-janus-fault` (a regression case of a fixed bug).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_fault: bool,
    /// The body must differ from this (a captured wrong answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_body: Option<String>,
    /// Exact body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Body substring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Exact JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// JSON body containing these fields (recursively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_contains: Option<serde_json::Value>,
    /// Header values that must match exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Whether the `x-janus-*` headers are required (false for answers of the HTTP layer itself).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub janus_headers: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Table {
    /// Reads a table file.
    pub fn load(path: &Path) -> anyhow::Result<Table> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid table", path.display()))
    }

    /// Writes the table as TOML.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self).context("table does not serialise")?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

//! Progress and build output for commands that build: a spinner on a terminal, nothing when stderr
//! is not one; cargo's own output goes to a log file whose tail is shown when the build fails.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::build::{Artifact, Flavor};

/// A spinner with a message and the elapsed time, drawn only when stderr is a terminal.
pub fn spinner(msg: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner:.cyan} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(msg);
    pb
}

/// The last `n` lines of a log, for an error message.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where `janus build` / `janus run` keep cargo's output.
pub fn build_log() -> PathBuf {
    crate::janus_home().join("target/janus/build.log")
}

/// [`crate::build`] with a spinner and cargo's output in [`build_log`]; a failure carries the log's
/// path and its last lines (the compiler's error).
pub fn build(
    service: &Path,
    flavor: Flavor,
    profile: crate::build::UnixProfile,
) -> anyhow::Result<Artifact> {
    let log = build_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&log, "");
    crate::build::set_output_log(Some(log.clone()));
    let what = match flavor {
        Flavor::Unix => "unix process",
        Flavor::Uk => "unikernel image",
    };
    let pb = spinner(format!("building {} ({what})", service.display()));
    let started = Instant::now();
    let result = crate::build::build_with(service, flavor, profile);
    crate::build::set_output_log(None);
    match result {
        Ok(a) => {
            pb.finish_and_clear();
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "janus: built {} in {:.1}s",
                    a.path.display(),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(a)
        }
        Err(e) => {
            pb.finish_and_clear();
            let tail = log_tail(&log, 30);
            if tail.trim().is_empty() {
                // cargo never ran: the error names the problem by itself.
                return Err(e);
            }
            eprintln!("{tail}");
            Err(e.context(format!(
                "building {} ({what}) failed; cargo's whole output is in {}",
                service.display(),
                log.display()
            )))
        }
    }
}

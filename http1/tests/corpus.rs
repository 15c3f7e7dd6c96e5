//! Runs every checked-in fuzz corpus file through the fuzz harness, so `cargo test` exercises
//! the corpus (and the harness's differential checks) without libFuzzer or nightly.

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::path::PathBuf;

fn corpus_files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn server_corpus_passes_the_harness() {
    let files = corpus_files("server");
    assert!(
        files.len() >= 10,
        "server corpus has only {} files",
        files.len()
    );
    for (path, bytes) in &files {
        eprintln!("{}", path.display());
        harness::check_server(bytes);
    }
}

#[test]
fn client_corpus_passes_the_harness() {
    let files = corpus_files("client");
    assert!(
        files.len() >= 5,
        "client corpus has only {} files",
        files.len()
    );
    for (_, bytes) in &files {
        harness::check_client(bytes);
    }
}

/// The seed files mean what their names say (guards against a harness that checks nothing).
#[test]
fn seed_files_parse_as_named() {
    use janus_http1::{Event, Limits, ServerConn};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/server");
    let outcome = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).expect("seed file");
        let mut conn = ServerConn::new(Limits::DEFAULT);
        conn.feed(&bytes);
        let mut events = Vec::new();
        while let Some(e) = conn.poll(0) {
            if matches!(e, Event::Request(_)) {
                conn.respond(&janus_http1::Response::new(200))
                    .expect("respond");
            }
            events.push(e);
        }
        events
    };
    let count = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Request(_)))
            .count()
    };
    assert_eq!(count(&outcome("pipelined")), 3);
    assert_eq!(count(&outcome("chunked_trailers")), 1);
    for bad in [
        "smuggle_cl_te",
        "te_gzip",
        "version",
        "chunk_bare_lf",
        "obs_fold",
    ] {
        assert!(
            matches!(outcome(bad).last(), Some(Event::Error(_))),
            "{bad} should fail"
        );
    }
}

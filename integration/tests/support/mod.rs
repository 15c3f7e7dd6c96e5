//! What the router tests share: a real router started in-process from a config text.

use std::path::Path;

/// Writes `config` to `dir/router.toml` (making `dir`) and starts the router from it on a runtime
/// of its own (two worker threads), returned with it.
pub fn start_router(dir: &Path, config: &str) -> (tokio::runtime::Runtime, lb_router::Running) {
    std::fs::create_dir_all(dir).expect("router dir");
    let path = dir.join("router.toml");
    std::fs::write(&path, config).expect("write config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let source = lb_router::ConfigSource {
        file: Some(path),
        flags: lb_router::FlagOverrides::default(),
    };
    let running = rt
        .block_on(lb_router::start(source))
        .expect("router starts");
    (rt, running)
}

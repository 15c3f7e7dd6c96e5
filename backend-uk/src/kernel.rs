//! The kernel's boot of a service: capabilities from the command line and fw_cfg, the node, the
//! service and admin listeners, then the run loop.

use alloc::boxed::Box;
use alloc::sync::Arc;

use runtime_abi::{Capabilities, Config, MemStore, Providers, Service, StoreBackend, StoreLimits};

use crate::boot::BootInfo;
use crate::conn::{Kind, serve_conn};
use crate::drivers::exit::ExitCode;
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::net;
use crate::node::Node;
use crate::providers::{UkClock, UkEntropy, UkStore};
use crate::{clock, kprintln, rt};

fn now_us() -> u64 {
    clock::monotonic_ns() / 1000
}
/// Listening sockets kept ready per port. The pools are refilled after every received frame
/// (`net::poll_ingress`), so a burst of SYNs never finds the pool empty with a few; each
/// socket costs 32 KiB of buffers, touched (and so faulted in by the host) at boot.
const SERVICE_BACKLOG: usize = 4;
const ADMIN_BACKLOG: usize = 2;
const _: () = assert!(SERVICE_BACKLOG + ADMIN_BACKLOG == runtime_abi::node::UK_LISTENING_SOCKETS);

/// Boots service `S`: brings the kernel up, builds the service from its capabilities and
/// serves it until the VM stops.
pub fn run<S: Service>(boot: BootInfo) -> ! {
    let mut env = rt::bring_up(&boot);
    let mut cfg = env.config.clone();
    // The token from fw_cfg (kept off the command line) wins over a `janus.token` word.
    if let Some(bytes) = crate::drivers::fw_cfg::read_file(crate::node::ADMIN_TOKEN_FILE) {
        match crate::node::admin_token_from_file(&bytes) {
            Ok(token) => cfg.admin_token = Some(token),
            Err(e) => rt::fatal(
                ExitCode::BootFailure,
                &alloc::format!("fw_cfg file {}: {e}", crate::node::ADMIN_TOKEN_FILE),
            ),
        }
    }
    let manifest = S::MANIFEST;
    if let Err(e) = manifest.check_upstreams(cfg.upstreams.iter().map(|(n, _)| n.as_str())) {
        rt::fatal(ExitCode::BootFailure, &alloc::format!("{e}"));
    }
    let config = match Config::resolve(
        &manifest,
        cfg.config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(c) => c,
        Err(e) => rt::fatal(ExitCode::BootFailure, &alloc::format!("config: {e}")),
    };
    let metrics = Arc::new(Metrics::default());
    // `S::MANIFEST.store` is a constant: for a service without a store the store engine is
    // not in the image at all.
    let store = const { S::MANIFEST.store }.map(|spec| {
        Arc::new(UkStore::new(
            MemStore::new(StoreLimits::from_spec(&spec)),
            Arc::clone(&metrics),
        ))
    });
    if let Some(store) = &store {
        let mut epoch = [0u8; 8];
        crate::entropy::fill(&mut epoch);
        store.set_epoch(u64::from_le_bytes(epoch));
    }
    crate::panic_state::set_panic_store(store.clone());
    rt::set_fatal_hooks(rt::FatalHooks {
        trace_id: || crate::panic_state::current_request().map(|c| c.trace_id),
        extra: if S::MANIFEST.store.is_some() {
            crate::panic_state::write_panic_state
        } else {
            |_| {}
        },
    });
    let executor = Executor::new();
    let timers = executor.timers();
    let providers = Providers {
        transport: Arc::new(crate::upstream::UkUpstreams::new(
            cfg.upstreams.clone(),
            Arc::clone(&timers),
        )),
        store: if const { S::MANIFEST.store.is_some() } {
            store.clone().map(|s| s as Arc<dyn StoreBackend>)
        } else {
            None
        },
        clock: Arc::new(UkClock {
            timers: Arc::clone(&timers),
            monotonic_ns: clock::monotonic_ns,
            wall_ns: clock::wall_ns,
        }),
        entropy: Arc::new(UkEntropy),
        config,
    };
    let service = match S::new(Capabilities::new(manifest, providers)) {
        Ok(s) => s,
        Err(e) => rt::fatal(
            ExitCode::BootFailure,
            &alloc::format!("service {} failed to start: {e}", manifest.name),
        ),
    };
    env.marks.mark("service");
    let node: &'static Node<S> = Box::leak(Box::new(Node {
        service,
        node_id: cfg.node_id.clone(),
        admin_token: cfg.admin_token.clone(),
        store,
        metrics,
        now_us,
        random: crate::entropy::fill,
    }));
    let port = cfg.port.unwrap_or(manifest.listener.port);
    let spawner = executor.spawner();
    match net::listen(port, SERVICE_BACKLOG) {
        Ok(listener) => {
            let sp = spawner.clone();
            spawner.spawn(async move {
                loop {
                    let stream = listener.accept().await;
                    sp.spawn(serve_conn(node, stream, Kind::Service));
                }
            });
        }
        Err(e) => rt::fatal(
            ExitCode::BootFailure,
            &alloc::format!("listen on port {port}: {e}"),
        ),
    }
    let admin = if cfg.admin_token.is_some() {
        match net::listen(cfg.admin_port, ADMIN_BACKLOG) {
            Ok(listener) => {
                let sp = spawner.clone();
                spawner.spawn(async move {
                    loop {
                        let stream = listener.accept().await;
                        sp.spawn(serve_conn(node, stream, Kind::Admin));
                    }
                });
                alloc::format!(":{}", cfg.admin_port)
            }
            Err(e) => rt::fatal(
                ExitCode::BootFailure,
                &alloc::format!("listen on admin port {}: {e}", cfg.admin_port),
            ),
        }
    } else {
        alloc::string::String::from("off (no admin token: fw_cfg opt/janus/token or janus.token)")
    };
    env.marks.mark("listen");
    let boot_us = rt::since_entry_us();
    kprintln!("janus-uk: {}", env.summary);
    kprintln!(
        "janus-uk: service {} {} node {} listening on :{port}, admin {admin}; boot to listen {}.{:03} ms",
        manifest.name,
        manifest.version,
        cfg.node_id,
        boot_us / 1000,
        boot_us % 1000
    );
    kprintln!("janus-uk: {}", env.marks.text());
    rt::run_loop(executor, env.nic_irq)
}

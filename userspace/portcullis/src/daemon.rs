//! Bringing the daemon up and down: the order of start-up, and who owns what while it runs.
//!
//! Start-up: certificates -> session tickets (key dir loaded and watched) -> demo upstream (if no backend) ->
//! listening sockets (all workers' SO_REUSEPORT sockets, so port 0 resolves once) -> XDP (told the resolved
//! ports) -> reuseport steering (optional, fails open) -> metrics endpoint -> workers -> ready (`/readyz`,
//! sd_notify; with fleet tickets, only once a valid key set is loaded). The main thread keeps a current-thread runtime for the control plane (signals, metrics
//! endpoint, demo upstream); workers never touch it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::sync::watch;

use crate::admin_http::{self, Admin};
use crate::config::Config;
use crate::connection::ListenerContext;
use crate::handshake::engine::{HandshakeEngine, InlineEngine};
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstreams;
use crate::shutdown::{self, Phase};
use crate::{demo_upstream, listener, notify, offload, steering, tickets, tls, worker, xdp};

/// A failure that is the operator's to fix in the configuration or files (exit code 2), or any other failure
/// (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration, or a certificate/key file that cannot be used.
    #[error("{0}")]
    Config(String),
    /// Anything else (address in use, no privileges for XDP, ...).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Where state lives when `state_dir` is not configured.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/portcullis");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("portcullis");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/portcullis"),
        None => PathBuf::from("portcullis-state"),
    }
}

/// Raises the soft open-file limit to the hard one: every connection is a descriptor (two once its upstream is
/// connected), and the soft limit (often 1,024) is a default for programs that do not know that. The hard limit
/// is the operator's (`LimitNOFILE=` in the unit, README "Idle connections"). Best effort: logged, never fatal.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let soft = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } == 0 {
        tracing::info!(from = soft, to = lim.rlim_max, "raised the open-file limit");
    } else {
        tracing::warn!(soft, hard = lim.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
    }
}

/// Runs the daemon until a signal stops it.
pub fn run(config: Config) -> Result<(), RunError> {
    let config = config.with_defaults();
    config
        .validate()
        .map_err(|e| RunError::Config(e.to_string()))?;
    let state_dir = config.state_dir.clone().unwrap_or_else(default_state_dir);
    raise_open_file_limit();
    let provider = tls::provider();
    let certs = tls::load_certificates(&config.tls, &state_dir, &provider)
        .map_err(|e| RunError::Config(e.to_string()))?;
    for c in &certs {
        tracing::info!(cert = %c.source.display(), names = ?c.names, "certificate loaded");
    }
    let resolver = tls::resolver(&certs).context("building the TLS configuration")?;
    let tls_config = tls::server_config(&config.tls, resolver.clone(), provider)
        .context("building the TLS configuration")?;
    let tickets = tickets::Tickets::start(&config.tls).context("setting up session tickets")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control runtime")?;
    let _enter = rt.enter();

    // Backends, or the demo upstream.
    let backends = if config.upstream.backends.is_empty() {
        let (demo, addr) = rt
            .block_on(demo_upstream::bind())
            .context("cannot bind the demo upstream on 127.0.0.1")?;
        rt.spawn(demo_upstream::serve(demo));
        tracing::info!(%addr, "no upstream configured: serving the built-in demo upstream");
        vec![addr]
    } else {
        config.upstream.backends.clone()
    };
    let upstreams = Arc::new(Upstreams::new(backends, config.upstream.connect_timeout));

    // Every worker's socket of every listener, bound before anything is announced.
    let cpus = worker::allowed_cpus();
    let workers = config.workers.unwrap_or(cpus.len().max(1));
    let mut groups = Vec::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let (sockets, addr) = listener::bind_group(l.address, workers, l.backlog)?;
        groups.push(sockets);
        bound.push(addr);
    }

    // XDP, told the resolved ports.
    let xdp_guard = if config.xdp.interfaces.is_empty() {
        None
    } else {
        let mut ports: Vec<u16> = bound.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        Some(
            xdp::XdpGuard::start(&config.xdp, &ports)
                .context("cannot start the XDP handshake guard")?,
        )
    };
    let xdp_collector = xdp_guard.as_ref().map(|g| g.counters().collector());

    // Reuseport steering (independent of XDP); fail open: without it the kernel's hash spreads connections.
    let worker_cpus: Vec<Option<usize>> = (0..workers)
        .map(|index| {
            if config.pin_workers && !cpus.is_empty() {
                cpus.get(index % cpus.len()).copied()
            } else {
                None
            }
        })
        .collect();
    let steering = if config.steering.enabled && workers < 2 {
        tracing::debug!("reuseport steering not loaded: one worker, nothing to steer");
        None
    } else if config.steering.enabled {
        let settings = steering::SteeringSettings {
            prefer_local_cpu: config.steering.prefer_local_cpu,
            worker_cpus: worker_cpus.clone(),
            pin_dir: config.xdp.pin_dir.clone(),
        };
        match steering::Steering::start(&settings, &groups) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "reuseport steering is off: the kernel's hash spreads new connections over the workers"
                );
                None
            }
        }
    } else {
        None
    };
    // Admission control turns the XDP program's SYN shed knob while it sheds.
    let syn_shed: Option<Arc<dyn crate::admission::SynShedControl>> = match &xdp_guard {
        Some(_) => Some(Arc::new(
            xdp::SynShed::open(&config.xdp.pin_dir).context("opening the XDP SYN shed knob")?,
        )),
        None => None,
    };
    let mut engine = None;
    let xdp_attachments = xdp_guard
        .as_ref()
        .map(xdp::XdpGuard::attachments)
        .unwrap_or_default();
    let metrics = Metrics::new_with(xdp_collector, |registry| {
        tickets.register(registry);
        xdp::register_attached(registry, &xdp_attachments);
        if let Some(s) = &steering {
            registry.register_collector(s.collector());
        }
        engine = Some(offload::setup::build(
            &config.engine,
            &config.admission,
            workers,
            registry,
            syn_shed,
        ));
    });
    let engine: Arc<dyn HandshakeEngine> = match engine {
        Some(built) => built?,
        None => Arc::new(InlineEngine),
    };

    // The admin endpoint.
    let ready = Arc::new(AtomicBool::new(false));
    let admin_listener = rt
        .block_on(tokio::net::TcpListener::bind(config.metrics.address))
        .with_context(|| {
            format!(
                "cannot listen for metrics on {} (metrics.address / --metrics)",
                config.metrics.address
            )
        })?;
    let metrics_addr = admin_listener
        .local_addr()
        .context("reading the metrics address")?;
    rt.spawn(admin_http::serve(
        admin_listener,
        Arc::new(Admin {
            metrics: metrics.clone(),
            ready: ready.clone(),
        }),
    ));

    // Workers.
    let contexts: Vec<Arc<ListenerContext>> = (0..config.listeners.len())
        .map(|i| {
            Arc::new(ListenerContext {
                tls: tickets.server_config(&tls_config, &config.listener_name(i)),
                certs: resolver.clone(),
                engine: engine.clone(),
                upstreams: upstreams.clone(),
                metrics: metrics.listener(&config.listener_name(i)),
                handshake_timeout: config.tls.handshake_timeout,
                max_client_hello_size: config.tls.max_client_hello_size,
                proxy_protocol: config.upstream.proxy_protocol,
                idle_timeout: config.upstream.idle_timeout,
                lazy_connect: config.upstream.lazy_connect,
            })
        })
        .collect();
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let mut handles = Vec::new();
    let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for (sockets, ctx) in groups.into_iter().zip(&contexts) {
        for (w, socket) in sockets.into_iter().enumerate() {
            if let Some(slot) = per_worker.get_mut(w) {
                slot.push((socket, ctx.clone()));
            }
        }
    }
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let saturation = steering
            .as_ref()
            .map(|s| s.saturated() as Arc<dyn steering::SaturationMap>);
        handles.push(worker::spawn(
            worker::WorkerSpec {
                index,
                cpu: worker_cpus.get(index).copied().flatten(),
                listeners,
                accepted: metrics.worker_accepted(index),
                saturation,
            },
            phase_rx.clone(),
        )?);
    }

    let listen_list = bound
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let announce = || {
        ready.store(true, Ordering::Release);
        tracing::info!(listeners = %listen_list, metrics = %metrics_addr, workers, engine = engine.name(), tickets = ?tickets.mode(), "portcullis ready");
        notify::notify(&format!(
            "READY=1\nSTATUS=serving TLS on {listen_list}\nPORTCULLIS_LISTEN={listen_list}\nPORTCULLIS_METRICS={metrics_addr}\n"
        ));
    };

    // Until a signal says stop and the workers are done.
    let drain_timeout = config.shutdown.drain_timeout;
    rt.block_on(async {
        let watcher = tokio::spawn(shutdown::watch_signals(phase_tx.clone(), drain_timeout));
        let mut phase = phase_rx.clone();
        // With fleet tickets, not ready until a valid key set is loaded (or a signal stops us first).
        if let Some(mut loaded) = tickets.keys_loaded()
            && !*loaded.borrow()
        {
            tracing::info!(listeners = %listen_list, metrics = %metrics_addr, "waiting for a valid ticket key set before announcing readiness");
            tokio::select! {
                _ = loaded.wait_for(|l| *l) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => {}
            }
        }
        if *phase.borrow() == Phase::Running {
            announce();
        }
        // Not ready any more as soon as draining starts.
        while *phase.borrow_and_update() == Phase::Running {
            if phase.changed().await.is_err() {
                break;
            }
        }
        ready.store(false, Ordering::Release);
        notify::notify("STOPPING=1\n");
        let joined = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        let _ = joined.await;
        watcher.abort();
    });
    // The workers closed their sockets, so the program is detached; this removes its pins.
    drop(steering);
    if let Some(guard) = xdp_guard {
        guard.detach().context("detaching XDP")?;
    }
    tracing::info!("portcullis stopped");
    Ok(())
}

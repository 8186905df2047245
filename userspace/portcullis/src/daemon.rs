//! Bringing the daemon up and down: the order of start-up, and who owns what while it runs.
//!
//! Start-up, each phase a function here: certificates -> session tickets (key dir loaded and watched) ->
//! [`demo_upstream`] (if no backend) -> [`bind`] (all workers' SO_REUSEPORT sockets, so port 0
//! resolves once) -> [`start_xdp`] (told the resolved ports) -> [`start_steering`] (optional, fails open) -> the
//! engine and metrics (`offload::setup::build`) -> [`serve_admin`] -> [`drop_privileges`] ->
//! [`ListenerParts::contexts`] (one per listener, in a [`worker::ContextSlot`]) -> [`spawn_workers`] -> ready
//! (`/readyz`, sd_notify; with fleet tickets, only once a valid key set is loaded). The main thread keeps a
//! current-thread runtime for the control plane (signals, reload on SIGHUP and on certificate file changes, metrics
//! endpoint, demo upstream); workers never touch it. A reload builds new contexts over the same
//! [`ListenerParts`] and stores them in the slots (`reload.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::sync::watch;

use crate::admin_http::{self, Admin};
use crate::config::{Config, ListenerMode};
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
    // systemd's StateDirectory= (the unit's /var/lib/portcullis, owned by its User=).
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
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

/// Runs the daemon until a signal stops it; `load` reads the configuration again on SIGHUP (`reload`).
pub fn run(
    config: Config,
    load: Box<dyn Fn() -> Result<Config, String> + Send>,
    upgrade: crate::upgrade::UpgradeOptions,
) -> Result<(), RunError> {
    let config = config.with_defaults();
    config
        .validate()
        .map_err(|e| RunError::Config(e.to_string()))?;
    let state_dir = config.state_dir.clone().unwrap_or_else(default_state_dir);
    // Resolved first: a user that does not exist is a configuration error, found before anything starts.
    let identity = crate::process::Identity::resolve(&config.process)
        .map_err(|e| RunError::Config(format!("{e:#}")))?;
    if let Some(id) = &identity {
        crate::secret_file::set_daemon_user(id.uid.as_raw());
    }
    let provider = tls::provider();
    let certs = tls::load_certificates(&config.tls, &state_dir, &provider)
        .map_err(|e| RunError::Config(e.to_string()))?;
    for c in &certs {
        tracing::info!(cert = %c.source.display(), names = ?c.names, "certificate loaded");
    }
    let resolver = tls::resolver(&certs).context("building the TLS configuration")?;
    let reload_metrics = crate::reload::ReloadMetrics::default();
    reload_metrics.loaded(&certs);
    let tickets =
        Arc::new(tickets::Tickets::start(&config.tls).context("setting up session tickets")?);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control runtime")?;
    let _enter = rt.enter();

    let demo_upstream = demo_upstream(&config, &rt)?;

    let cpus = worker::allowed_cpus();
    let workers = config.workers.unwrap_or(cpus.len().max(1));
    // Upgrade: the running daemon's sockets instead of new ones (`upgrade` module).
    let mut inherited = inherit(&upgrade, &config, workers)?;
    let (groups, bound) = match inherited.as_mut() {
        Some(i) => i.take_groups().map_err(anyhow::Error::new)?,
        None => bind(&config, workers)?,
    };
    defer_accepts(&config, &groups)?;

    let xdp_guard = start_xdp(&config, &bound, inherited.as_ref().and_then(|i| i.xdp()))?;
    let xdp_collector = xdp_guard.as_ref().map(|g| g.counters().collector());

    let worker_cpus = worker_cpus(&config, workers, &cpus);
    let steering = start_steering(&config, workers, &worker_cpus, &groups, inherited.is_some());
    // Admission control turns the XDP program's SYN shed knob while it sheds.
    // The same handle writes the `[xdp]` knobs on reload (one lock for both writers of the map value).
    let xdp_config_map: Option<Arc<xdp::SynShed>> = match &xdp_guard {
        Some(_) => Some(Arc::new(
            xdp::SynShed::open(&config.xdp.pin_dir).context("opening the XDP SYN shed knob")?,
        )),
        None => None,
    };
    let syn_shed = xdp_config_map
        .clone()
        .map(|s| s as Arc<dyn crate::admission::SynShedControl>);
    let mut engine = None;
    let mut http_metrics = None;
    let xdp_attachments = xdp_guard
        .as_ref()
        .map(xdp::XdpGuard::attachments)
        .unwrap_or_default();
    let store_metrics = tickets::session_store::metrics::StoreMetrics::new();
    let session_store = start_session_store(&config, &tickets, store_metrics.clone())?;
    let limit_metrics = crate::limits::LimitMetrics::default();
    let release_metrics = crate::memory::ReleaseMetrics::default();
    let metrics = Metrics::new_with(xdp_collector, |registry| {
        limit_metrics.register(registry);
        release_metrics.register(registry);
        reload_metrics.register(registry);
        tickets.register(registry);
        store_metrics.register(registry);
        xdp::register_attached(registry, &xdp_attachments);
        if let Some(s) = &steering {
            registry.register_collector(s.collector());
        }
        http_metrics = Some(crate::http::HttpMetrics::register(registry));
        engine = Some(offload::setup::build(
            &config.engine,
            &config.admission,
            workers,
            registry,
            syn_shed,
        ));
    });
    let (engine, admission, engine_knobs): (Arc<dyn HandshakeEngine>, _, _) = match engine {
        Some(built) => built?,
        None => (Arc::new(InlineEngine), None, None),
    };
    let admission_live = admission.clone();

    let ready = Arc::new(AtomicBool::new(false));
    let admin_socket = inherited
        .as_mut()
        .and_then(|i| i.take_admin(config.metrics.address));
    let (metrics_addr, admin_task, admin_dup) =
        serve_admin(&rt, &config, &metrics, &ready, admin_socket)?;

    // The access log of http listeners, reopened on SIGUSR1.
    let http_metrics = match http_metrics {
        Some(m) => m,
        None => unreachable!("Metrics::new_with runs its closure"),
    };
    let access_log = crate::http::AccessLog::start(
        &config.log.access,
        config.log.log_query,
        http_metrics.access_log_dropped.clone(),
    )
    .map_err(|e| RunError::Config(format!("log.access: {e}")))?;
    let reopen = access_log
        .as_ref()
        .map(|log| rt.spawn(log.clone().reopen_on_sigusr1()).abort_handle());

    // Before the privilege drop: the control socket's directory may be root's.
    let mut control = bind_control(&upgrade, identity.as_ref(), inherited.is_some());

    // Least privilege: everything that needs root is done (listeners, XDP, steering, pins, admin socket).
    drop_privileges(identity.as_ref(), &config, &state_dir)?;

    // Workers.
    crate::limits::raise_nofile_limit();
    let limits = Arc::new(crate::limits::Limits::new(
        &config.limits,
        config.upstream.idle_timeout,
        limit_metrics,
    ));
    tracing::debug!(max_connections = limits.process_cap(), "connection cap");
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let parts = ListenerParts {
        resolver: resolver.clone(),
        provider: provider.clone(),
        tickets: tickets.clone(),
        engine: engine.clone(),
        admission,
        session_store: session_store.clone(),
        store_metrics,
        demo_upstream,
        metrics: metrics.clone(),
        http_metrics,
        access_log: std::sync::Mutex::new(AccessLogState {
            config: config.log.clone(),
            log: access_log,
            reopen,
        }),
        limits: limits.clone(),
        phase: phase_rx.clone(),
    };
    let slots: Vec<worker::ContextSlot> = parts
        .contexts(&config)?
        .into_iter()
        .map(|c| Arc::new(arc_swap::ArcSwap::new(c)))
        .collect();
    let offered = offered_sockets(&config, workers, &groups, &bound, admin_dup);
    let (handles, runtimes) = spawn_workers(
        groups,
        &slots,
        &worker_cpus,
        steering.as_ref(),
        &metrics,
        &limits,
        &phase_rx,
    )?;
    // On the control runtime, whose once-per-interval wake-up is the feature's only cost.
    rt.spawn(crate::memory::release_when_quiet(
        config.memory.release_after_quiet,
        runtimes,
        release_metrics,
    ));

    let listen_list = bound
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // Upgrade: our workers accept on the inherited sockets; the old daemon may stop accepting.
    if let Some(inherited) = inherited.take() {
        finish_takeover(inherited, &upgrade, control.as_mut());
    }
    let xdp_guard = Arc::new(std::sync::Mutex::new(xdp_guard));
    let handed_over = Arc::new(AtomicBool::new(false));
    // Read when a drain starts, set by a reload.
    let drain_timeout = shutdown::DrainTimeout::new(config.shutdown.drain_timeout);
    let handoff = control.as_ref().and_then(|control| {
        serve_handoff(
            control,
            offered,
            &xdp_guard,
            &drain_timeout,
            &phase_tx,
            &handed_over,
            admin_task.abort_handle(),
        )
    });

    let announce = || {
        ready.store(true, Ordering::Release);
        tracing::info!(listeners = %listen_list, metrics = %metrics_addr, workers, engine = engine.name(), tickets = ?tickets.mode(), "portcullis ready");
        // MAINPID: after an upgrade the service's main process is this one (`NotifyAccess=all` in the unit).
        notify::notify(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving TLS on {listen_list}\nPORTCULLIS_LISTEN={listen_list}\nPORTCULLIS_METRICS={metrics_addr}\n",
            std::process::id()
        ));
        crate::upgrade::report_status(&format!("READY pid={}", std::process::id()));
    };

    // Until a signal says stop and the workers are done.
    let reloader = crate::reload::Reloader::new(
        config.clone(),
        load,
        state_dir.clone(),
        provider,
        reload_metrics,
        crate::reload::Live {
            resolver: resolver.clone(),
            session_store: session_store.is_some(),
            contexts: Box::new(move |c: &Config| parts.contexts(c)),
            slots,
            xdp: xdp_config_map,
            limits: limits.clone(),
            drain_timeout: drain_timeout.clone(),
            engine: engine_knobs,
            admission: admission_live,
        },
        &certs,
    );
    let hangups = shutdown::hangups().context("cannot install the SIGHUP handler")?;
    let usr2 = shutdown::usr2().context("cannot install the SIGUSR2 handler")?;
    rt.block_on(async {
        let watcher = tokio::spawn(shutdown::watch_signals(
            phase_tx.clone(),
            drain_timeout.clone(),
        ));
        let reloads = tokio::spawn(reloader.run(hangups));
        let usr2 = tokio::spawn(shutdown::explain_usr2(usr2));
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
        if let Some(h) = &handoff {
            h.withdraw();
        }
        // After a handoff the service goes on in the successor: nothing to tell systemd.
        if !handed_over.load(Ordering::Acquire) {
            notify::notify("STOPPING=1\n");
        }
        let joined = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        let _ = joined.await;
        watcher.abort();
        reloads.abort();
        usr2.abort();
    });
    let xdp_guard = xdp_guard.lock().ok().and_then(|mut g| g.take());
    if handed_over.load(Ordering::Acquire) {
        // The successor owns the links, the pins and the groups' program now.
        if let Some(s) = steering {
            s.hand_over();
        }
        if let Some(guard) = xdp_guard {
            guard.hand_over();
        }
        tracing::info!("portcullis stopped; the successor serves");
        return Ok(());
    }
    // The workers closed their sockets, so the program is detached; this removes its pins.
    drop(steering);
    if let Some(guard) = xdp_guard {
        guard.detach().context("detaching XDP")?;
    }
    drop(control);
    tracing::info!("portcullis stopped");
    Ok(())
}

/// The session store of early-data listeners, when any listener has 0-RTT.
fn start_session_store(
    config: &Config,
    tickets: &tickets::Tickets,
    metrics: tickets::session_store::metrics::StoreMetrics,
) -> anyhow::Result<Option<Arc<tickets::session_store::SessionStore>>> {
    if !config.listeners.iter().any(|l| l.early_data.enabled()) {
        return Ok(None);
    }
    let store = tickets::session_store::SessionStore::start(
        &config.tls.session_store,
        tickets.fleet_keys(),
        tickets.session_cache(),
        config.tls.ticket_lifetime,
        metrics,
    )
    .context("starting the 0-RTT session store ([tls.session_store])")?;
    tracing::info!(store = ?store, "0-RTT session store ready");
    Ok(Some(Arc::new(store)))
}

/// Listener `i`'s early-data step: its two configurations over the shared store, or `off`.
fn early_data_step(
    config: &Config,
    i: usize,
    base: &Arc<rustls::ServerConfig>,
    store: Option<&Arc<tickets::session_store::SessionStore>>,
    admission: Option<Arc<crate::admission::Admission>>,
    metrics: &tickets::session_store::metrics::StoreMetrics,
) -> crate::handshake::early_data::EarlyData {
    use crate::handshake::early_data::{EarlyData, Shedding};
    let counters = metrics.listener(&config.listener_name(i));
    let early = config.listeners.get(i).map(|l| &l.early_data);
    let (Some(early), Some(store)) = (early.filter(|e| e.enabled()), store) else {
        return EarlyData::off(counters);
    };
    let shedding: Option<Shedding> = admission.map(|a| {
        Arc::new(move || a.advance_to_now() == crate::admission::controller::State::Shedding)
            as Shedding
    });
    let mut accept = tickets::Tickets::early_data_config(base, store.clone(), early.max_size);
    if config.listeners.get(i).map(|l| l.mode) == Some(ListenerMode::Http) {
        // Answers to early requests leave right after our Finished, a round trip before the client's (RFC 8446
        // §4.6.1 "0.5-RTT data"): safe here, we never authenticate clients.
        Arc::make_mut(&mut accept).send_half_rtt_data = true;
    }
    EarlyData::on(
        store.clone(),
        accept,
        tickets::Tickets::early_data_config(base, store.clone(), 0),
        early.freshness,
        shedding,
        counters,
    )
}

/// The built-in demo upstream on loopback (served by the control runtime) when no backend is configured.
fn demo_upstream(
    config: &Config,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<SocketAddr>> {
    if !config.upstream.backends.is_empty() {
        return Ok(None);
    }
    let (demo, addr) = rt
        .block_on(demo_upstream::bind())
        .context("cannot bind the demo upstream on 127.0.0.1")?;
    rt.spawn(demo_upstream::serve(demo));
    tracing::info!(%addr, "no upstream configured: serving the built-in demo upstream");
    Ok(Some(addr))
}

/// Every worker's socket of every listener, bound before anything is announced (port 0 resolves on the first
/// socket of each group); the sockets by listener, and each listener's bound address.
fn bind(
    config: &Config,
    workers: usize,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), RunError> {
    let mut groups = Vec::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let (sockets, addr) = listener::bind_group(l.address, workers, l.backlog)?;
        groups.push(sockets);
        bound.push(addr);
    }
    Ok((groups, bound))
}

/// Each listener's `defer_accept` on every worker's socket of it, new or inherited (an upgrade applies its own
/// config to the running daemon's sockets).
fn defer_accepts(config: &Config, groups: &[Vec<std::net::TcpListener>]) -> anyhow::Result<()> {
    for (l, sockets) in config.listeners.iter().zip(groups) {
        for socket in sockets {
            listener::defer_accept(socket, l.defer_accept).with_context(|| {
                format!(
                    "cannot set listeners' defer_accept ({}) on {}",
                    humantime::format_duration(l.defer_accept),
                    l.address
                )
            })?;
        }
    }
    Ok(())
}

/// The XDP guard, told the resolved listener ports; `None` without `[xdp] interfaces`. Taking over, it replaces
/// the running daemon's program on its links.
fn start_xdp(
    config: &Config,
    bound: &[SocketAddr],
    inherit: Option<&crate::upgrade::protocol::XdpOffer>,
) -> anyhow::Result<Option<xdp::XdpGuard>> {
    if config.xdp.interfaces.is_empty() {
        return Ok(None);
    }
    let mut ports: Vec<u16> = bound.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    let guard = match inherit {
        Some(offer) => xdp::XdpGuard::take_over(&config.xdp, &ports, offer)
            .context("cannot take over the running daemon's XDP handshake guard")?,
        None => xdp::XdpGuard::start(&config.xdp, &ports)
            .context("cannot start the XDP handshake guard")?,
    };
    Ok(Some(guard))
}

/// The CPU each worker is pinned to (`None`: not pinned).
fn worker_cpus(config: &Config, workers: usize, cpus: &[usize]) -> Vec<Option<usize>> {
    (0..workers)
        .map(|index| {
            if config.pin_workers && !cpus.is_empty() {
                cpus.get(index % cpus.len()).copied()
            } else {
                None
            }
        })
        .collect()
}

/// Reuseport steering (independent of XDP), when enabled and there is more than one worker. Fails open: without
/// it the kernel's hash spreads connections, with a warning saying so.
fn start_steering(
    config: &Config,
    workers: usize,
    worker_cpus: &[Option<usize>],
    groups: &[Vec<std::net::TcpListener>],
    take_over: bool,
) -> Option<steering::Steering> {
    if !config.steering.enabled {
        return None;
    }
    if workers < 2 {
        tracing::debug!("reuseport steering not loaded: one worker, nothing to steer");
        return None;
    }
    let settings = steering::SteeringSettings {
        prefer_local_cpu: config.steering.prefer_local_cpu,
        worker_cpus: worker_cpus.to_vec(),
        pin_dir: config.xdp.pin_dir.clone(),
        take_over,
    };
    match steering::Steering::start(&settings, groups) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "reuseport steering is off: the kernel's hash spreads new connections over the workers"
            );
            None
        }
    }
}

/// The admin endpoint (`/metrics`, `/healthz`, `/readyz`, `/fingerprints`) on the control runtime, on
/// `inherited` (an upgrade's) or a new socket: its address, its task, and a duplicate of its socket for a
/// successor.
fn serve_admin(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    metrics: &Metrics,
    ready: &Arc<AtomicBool>,
    inherited: Option<std::net::TcpListener>,
) -> anyhow::Result<(
    SocketAddr,
    tokio::task::JoinHandle<()>,
    Option<std::os::fd::OwnedFd>,
)> {
    let admin_listener = match inherited {
        Some(socket) => {
            let _guard = rt.enter();
            socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(socket))
                .context("cannot serve the inherited admin socket")?
        }
        None => rt
            .block_on(tokio::net::TcpListener::bind(config.metrics.address))
            .with_context(|| {
                format!(
                    "cannot listen for metrics on {} (metrics.address / --metrics)",
                    config.metrics.address
                )
            })?,
    };
    let metrics_addr = admin_listener
        .local_addr()
        .context("reading the metrics address")?;
    let dup = std::os::fd::AsFd::as_fd(&admin_listener)
        .try_clone_to_owned()
        .ok();
    let task = rt.spawn(admin_http::serve(
        admin_listener,
        Arc::new(Admin {
            metrics: metrics.clone(),
            ready: ready.clone(),
            limits: admin_http::AdminLimits::default(),
        }),
    ));
    Ok((metrics_addr, task, dup))
}

/// The running daemon's sockets when `--takeover` names its control socket, checked against `config`.
fn inherit(
    upgrade: &crate::upgrade::UpgradeOptions,
    config: &Config,
    workers: usize,
) -> Result<Option<crate::upgrade::Inherited>, RunError> {
    let Some(path) = &upgrade.takeover else {
        return Ok(None);
    };
    let inherited = crate::upgrade::Inherited::connect(path)
        .map_err(|e| RunError::Other(anyhow::Error::new(e).context("upgrade")))?;
    if let Err(e) = inherited.check(config, workers) {
        inherited.abort(&e.to_string());
        return Err(RunError::Config(e.to_string()));
    }
    Ok(Some(inherited))
}

/// The control socket: at its path, or, taking over, beside the old one's until the handoff is done. `None`
/// (with a warning) when it cannot be bound: the daemon serves, but cannot be upgraded in place.
fn bind_control(
    upgrade: &crate::upgrade::UpgradeOptions,
    identity: Option<&crate::process::Identity>,
    taking_over: bool,
) -> Option<crate::upgrade::ControlSocket> {
    let path = upgrade.control_path();
    let owner = identity.map(|id| (id.uid, id.gid));
    let bound = if taking_over {
        let mut staging = path.clone().into_os_string();
        staging.push(format!(".{}", std::process::id()));
        crate::upgrade::ControlSocket::bind_at(std::path::Path::new(&staging), owner).map(Some)
    } else {
        crate::upgrade::ControlSocket::bind(&path, owner)
    };
    match bound {
        Ok(control) => control,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), path = %path.display(), "no control socket: this daemon cannot be upgraded in place (--control-socket)");
            None
        }
    }
}

/// Duplicates of every listening socket (and the admin one) with their description, for a successor.
fn offered_sockets(
    config: &Config,
    workers: usize,
    groups: &[Vec<std::net::TcpListener>],
    bound: &[SocketAddr],
    admin: Option<std::os::fd::OwnedFd>,
) -> Option<crate::upgrade::Offered> {
    use crate::upgrade::protocol::{ListenerOffer, Offer, SocketTag};
    let mut sockets = Vec::new();
    for (listener, group) in groups.iter().enumerate() {
        for (worker, socket) in group.iter().enumerate() {
            match std::os::fd::AsFd::as_fd(socket).try_clone_to_owned() {
                Ok(fd) => sockets.push((SocketTag::Listener { listener, worker }, fd)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot duplicate a listening socket: upgrades are off");
                    return None;
                }
            }
        }
    }
    let admin_address = admin.as_ref().map(|_| config.metrics.address);
    if let Some(fd) = admin {
        sockets.push((SocketTag::Admin, fd));
    }
    Some(crate::upgrade::Offered {
        offer: Offer {
            version: crate::upgrade::protocol::VERSION,
            pid: std::process::id(),
            workers,
            listeners: config
                .listeners
                .iter()
                .zip(bound)
                .map(|(l, &bound)| ListenerOffer {
                    configured: l.address,
                    bound,
                })
                .collect(),
            admin: admin_address,
            xdp: None,
        },
        sockets,
    })
}

/// Tells the old daemon that this one serves, and moves the control socket to the usual path.
fn finish_takeover(
    inherited: crate::upgrade::Inherited,
    upgrade: &crate::upgrade::UpgradeOptions,
    control: Option<&mut crate::upgrade::ControlSocket>,
) {
    let old = inherited.offer.pid;
    match inherited.ready() {
        Ok(drain) => {
            tracing::info!(old_pid = old, drain_timeout = ?drain, "upgrade: took over; the old daemon drains")
        }
        Err(e) => {
            tracing::warn!(old_pid = old, error = %e, "upgrade: the old daemon did not confirm; serving anyway")
        }
    }
    if let Some(control) = control
        && let Err(e) = control.publish(&upgrade.control_path())
    {
        tracing::warn!(error = %format!("{e:#}"), "upgrade: control socket");
    }
}

/// The XDP guard's side of a handoff, shared with the control thread.
struct SharedGuard(Arc<std::sync::Mutex<Option<xdp::XdpGuard>>>);

impl crate::upgrade::XdpLinks for SharedGuard {
    fn pin(&self) -> anyhow::Result<crate::upgrade::protocol::XdpOffer> {
        let mut guard = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("XDP guard poisoned"))?;
        guard
            .as_mut()
            .context("the XDP guard is detached")?
            .pin_links()
    }

    fn unpin(&self) {
        if let Ok(guard) = self.0.lock()
            && let Some(g) = guard.as_ref()
        {
            g.unpin_links();
        }
    }
}

/// Starts handing the sockets to successors on `control`; once one is ready, this daemon drains.
fn serve_handoff(
    control: &crate::upgrade::ControlSocket,
    offered: Option<crate::upgrade::Offered>,
    xdp_guard: &Arc<std::sync::Mutex<Option<xdp::XdpGuard>>>,
    drain_timeout: &shutdown::DrainTimeout,
    phase_tx: &watch::Sender<Phase>,
    handed_over: &Arc<AtomicBool>,
    admin_task: tokio::task::AbortHandle,
) -> Option<Arc<crate::upgrade::Handoff>> {
    let offered = offered?;
    let xdp: Option<Box<dyn crate::upgrade::XdpLinks>> = xdp_guard
        .lock()
        .ok()
        .filter(|g| g.is_some())
        .map(|_| Box::new(SharedGuard(xdp_guard.clone())) as Box<dyn crate::upgrade::XdpLinks>);
    let phase = phase_tx.clone();
    let handed = handed_over.clone();
    let drain = drain_timeout.clone();
    let handoff = Arc::new(crate::upgrade::Handoff::new(
        offered,
        xdp,
        drain_timeout.clone(),
        Box::new(move || {
            handed.store(true, Ordering::Release);
            // The successor serves /metrics and /readyz on the same socket from now on.
            admin_task.abort();
            let _ = phase.send(Phase::Draining {
                deadline: shutdown::drain_deadline(std::time::Instant::now(), drain.get()),
            });
        }),
    ));
    match handoff.clone().serve(control) {
        Ok(()) => {
            tracing::info!(path = %control.path().display(), "control socket ready for upgrades");
            Some(handoff)
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "upgrades are off");
            None
        }
    }
}

/// Least privilege, once everything that needs it is done: become `[process] user` when started as root with
/// one; give up every capability when started unprivileged with ambient ones (the systemd unit) or asked to
/// (`[process] drop_capabilities`); else say that root is kept.
fn drop_privileges(
    identity: Option<&crate::process::Identity>,
    config: &Config,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    match identity {
        Some(id) => crate::process::drop_privileges(id, &[config.xdp.pin_dir.as_path(), state_dir])
            .context("dropping privileges ([process] user / --user)"),
        None if !nix::unistd::Uid::effective().is_root() || config.process.drop_capabilities => {
            crate::process::drop_capabilities().context("dropping capabilities after start-up")
        }
        None => {
            tracing::info!(
                "running as root: set [process] user (or --user) to drop root after start-up"
            );
            Ok(())
        }
    }
}

/// What every listener's context is built from besides the configuration: the parts that live as long as the
/// daemon. A reload builds new contexts from the new configuration over the same parts.
struct ListenerParts {
    resolver: Arc<tls::resolver::SniResolver>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    tickets: Arc<tickets::Tickets>,
    engine: Arc<dyn HandshakeEngine>,
    admission: Option<Arc<crate::admission::Admission>>,
    session_store: Option<Arc<tickets::session_store::SessionStore>>,
    store_metrics: tickets::session_store::metrics::StoreMetrics,
    /// The demo upstream's address, when it runs (no backend configured at start).
    demo_upstream: Option<SocketAddr>,
    metrics: Metrics,
    http_metrics: crate::http::HttpMetrics,
    /// The access log in use; a reload with another `[log]` section starts a new one.
    access_log: std::sync::Mutex<AccessLogState>,
    limits: Arc<crate::limits::Limits>,
    phase: watch::Receiver<Phase>,
}

impl ListenerParts {
    /// One context per listener of `config`, shared by the workers' connections on it: its mode (an HTTP
    /// front end or the byte relay), its TLS configuration (versions, ALPN by mode, tickets, the early-data
    /// step), its upstreams and timeouts, and the shared parts.
    fn contexts(&self, config: &Config) -> anyhow::Result<Vec<Arc<ListenerContext>>> {
        let backends = match (config.upstream.backends.is_empty(), self.demo_upstream) {
            (false, _) => config.upstream.backends.clone(),
            (true, Some(demo)) => vec![demo],
            (true, None) => anyhow::bail!(
                "upstream.backends is empty and the demo upstream is not running: removing every backend \
                 takes a restart"
            ),
        };
        let upstreams = Arc::new(Upstreams::new(backends, config.upstream.connect_timeout));
        let tls_config =
            tls::server_config(&config.tls, self.resolver.clone(), self.provider.clone())
                .context("building the TLS configuration")?;
        let access_log = self.access_log(config)?;
        let contexts = (0..config.listeners.len())
            .map(|i| {
                let mode = config
                    .listeners
                    .get(i)
                    .map_or(ListenerMode::Tcp, |l| l.mode);
                let name = config.listener_name(i);
                let http = (mode == ListenerMode::Http).then(|| {
                    Arc::new(
                        crate::http::HttpContext::new(
                            &name,
                            config.http.clone(),
                            upstreams.clone(),
                            self.http_metrics.clone(),
                            access_log.clone(),
                            self.phase.clone(),
                        )
                        .with_early(
                            config
                                .listeners
                                .get(i)
                                .filter(|l| l.early_data.enabled())
                                .map(|l| crate::http::early::EarlyPolicy::new(&l.early_data)),
                        ),
                    )
                });
                let mut base = (*tls_config).clone();
                base.alpn_protocols = config
                    .tls
                    .alpn_for(mode)
                    .iter()
                    .map(|proto| proto.as_bytes().to_vec())
                    .collect();
                let base = Arc::new(base);
                Arc::new(ListenerContext {
                    access_log: (mode == ListenerMode::Tcp)
                        .then(|| access_log.clone())
                        .flatten(),
                    http,
                    tls: self.tickets.server_config(&base, &name),
                    early: early_data_step(
                        config,
                        i,
                        &base,
                        self.session_store.as_ref(),
                        self.admission.clone(),
                        &self.store_metrics,
                    ),
                    certs: self.resolver.clone(),
                    engine: self.engine.clone(),
                    upstreams: upstreams.clone(),
                    metrics: self.metrics.listener(&name),
                    handshake_timeout: config.tls.handshake_timeout,
                    max_client_hello_size: config.tls.max_client_hello_size,
                    proxy_protocol: config.upstream.proxy_protocol,
                    idle_timeout: config.upstream.idle_timeout,
                    lazy_connect: config.upstream.lazy_connect,
                    limits: self.limits.clone(),
                })
            })
            .collect();
        Ok(contexts)
    }
}

/// The access log of `[log]` as it was last started.
struct AccessLogState {
    config: crate::http::LogConfig,
    log: Option<crate::http::AccessLog>,
    /// The task that reopens it on SIGUSR1.
    reopen: Option<tokio::task::AbortHandle>,
}

impl ListenerParts {
    /// The access log for `config`: the one in use, or, when `[log]` changed, a new one (the old one's writer
    /// ends once the connections that hold it close). Called on the control runtime.
    fn access_log(&self, config: &Config) -> anyhow::Result<Option<crate::http::AccessLog>> {
        let mut state = self
            .access_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if format!("{:?}", state.config) != format!("{:?}", config.log) {
            let log = crate::http::AccessLog::start(
                &config.log.access,
                config.log.log_query,
                self.http_metrics.access_log_dropped.clone(),
            )
            .with_context(|| format!("log.access: cannot open {:?}", config.log.access))?;
            if let Some(old) = state.reopen.take() {
                old.abort();
            }
            state.reopen = log
                .as_ref()
                .map(|l| tokio::spawn(l.clone().reopen_on_sigusr1()).abort_handle());
            state.config = config.log.clone();
            state.log = log;
        }
        Ok(state.log.clone())
    }
}

/// One pinned worker thread per index, each given its own socket of every listener; also returns the workers'
/// runtimes, which `memory` watches.
fn spawn_workers(
    groups: Vec<Vec<std::net::TcpListener>>,
    contexts: &[worker::ContextSlot],
    worker_cpus: &[Option<usize>],
    steering: Option<&steering::Steering>,
    metrics: &Metrics,
    limits: &Arc<crate::limits::Limits>,
    phase: &watch::Receiver<Phase>,
) -> anyhow::Result<(Vec<std::thread::JoinHandle<()>>, crate::memory::Workers)> {
    let runtimes = crate::memory::Workers::default();
    let mut per_worker: Vec<Vec<_>> = (0..worker_cpus.len()).map(|_| Vec::new()).collect();
    for (sockets, ctx) in groups.into_iter().zip(contexts) {
        for (w, socket) in sockets.into_iter().enumerate() {
            if let Some(slot) = per_worker.get_mut(w) {
                slot.push((socket, ctx.clone()));
            }
        }
    }
    let mut handles = Vec::new();
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let saturation = steering.map(|s| s.saturated() as Arc<dyn steering::SaturationMap>);
        handles.push(worker::spawn(
            worker::WorkerSpec {
                index,
                cpu: worker_cpus.get(index).copied().flatten(),
                listeners,
                accepted: metrics.worker_accepted(index),
                saturation,
                limits: limits.clone(),
                runtimes: runtimes.clone(),
            },
            phase.clone(),
        )?);
    }
    Ok((handles, runtimes))
}

//! Choosing and starting the handshake engine from the `[engine]` and `[admission]` sections.

use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;

use super::metrics::EngineMetrics;
use super::policy::{EngineKnobs, FullRingPolicy, Observer, OffloadHandshakes};
use super::software::SoftwareEngine;
use super::{EngineConfig, EngineKind, OffloadEngine};
use crate::admission::{Admission, AdmissionConfig, AdmissionEngine, EngineBounds, SynShedControl};
use crate::handshake::engine::{HandshakeEngine, InlineEngine};

/// The engine, admission control when it is on, and the engine's knobs a reload sets (not with `inline`).
pub type Built = (
    Arc<dyn HandshakeEngine>,
    Option<Arc<Admission>>,
    Option<Arc<EngineKnobs>>,
);

/// Builds the engine the workers hand the expensive step to, registering its metrics. `workers` is the
/// default number of engine instances. Also returns admission control, when on, for read-only questions
/// (the early-data step refuses 0-RTT while it sheds).
pub fn build(
    engine: &EngineConfig,
    admission: &AdmissionConfig,
    workers: usize,
    registry: &mut Registry,
    syn_shed: Option<Arc<dyn SynShedControl>>,
) -> anyhow::Result<Built> {
    if engine.kind == EngineKind::Inline {
        if admission.enabled {
            tracing::info!(
                "engine.kind = \"inline\": admission control needs the offload engine's queue; it is off"
            );
        }
        return Ok((Arc::new(InlineEngine), None, None));
    }
    let instances = engine.instances.unwrap_or(workers).max(1);
    let software = Arc::new(
        SoftwareEngine::start(instances, engine.ring_depth)
            .context("cannot start the offload engine's crypto threads")?,
    );
    let depth_of = software.clone();
    let depth_max_of = software.clone();
    let restarts_of = software.clone();
    let metrics = EngineMetrics::register(
        registry,
        Arc::new(move || {
            (0..depth_of.instances())
                .map(|i| depth_of.depth(i) as u64)
                .collect()
        }),
        Arc::new(move || {
            (0..depth_max_of.instances())
                .map(|i| depth_max_of.depth_max(i) as u64)
                .collect()
        }),
        Arc::new(move || restarts_of.restarts()),
    );
    let policy = FullRingPolicy::from_config(engine);
    tracing::info!(instances, ring_depth = engine.ring_depth, policy = ?policy, admission = admission.enabled, "offload engine started");
    if !admission.enabled {
        let offload = OffloadHandshakes::new(software, policy, metrics, None)
            .inline_when_idle(engine.inline_when_idle);
        let knobs = offload.knobs();
        return Ok((Arc::new(offload), None, Some(knobs)));
    }
    let gate = Admission::new(
        admission.clone(),
        instances,
        bounds(engine),
        registry,
        syn_shed,
    );
    Admission::start_ticker(&gate);
    let observer: Arc<dyn Observer> = gate.clone();
    let offload = OffloadHandshakes::new(software, policy, metrics, Some(observer))
        .inline_when_idle(engine.inline_when_idle);
    let knobs = offload.knobs();
    Ok((
        Arc::new(AdmissionEngine::new(offload, gate.clone())),
        Some(gate),
        Some(knobs),
    ))
}

/// What the engine of `[engine]` holds, for admission control's budget (at start and on reload).
pub fn bounds(engine: &EngineConfig) -> EngineBounds {
    EngineBounds {
        ring_depth: engine.ring_depth,
        wait_deadline: matches!(FullRingPolicy::from_config(engine), FullRingPolicy::Wait(_))
            .then_some(engine.wait_deadline),
    }
}

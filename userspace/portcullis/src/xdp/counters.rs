//! [`XdpCounters`]: reads the per-CPU verdict and malformed-ClientHello counters, and the drops per blocked
//! fingerprint.

use std::borrow::Borrow;
use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray};
use portcullis_abi::{
    client_hello::{Malformed, fingerprint_hex},
    fp_shapes::ShapeSet,
    names::{MAP_XDP_MALFORMED, MAP_XDP_VERDICTS},
    verdict::Verdict,
};
use prometheus_client::collector::Collector;

use crate::metrics::{ConstCounterCollector, CounterFamilies, per_cpu_total};

/// A handle on the XDP verdict counters. Cheap to clone (one `Arc`), `Send + Sync`; it keeps the map open, so it
/// stays readable after the guard detached (the values then stop moving).
#[derive(Clone)]
pub struct XdpCounters {
    map: Arc<PerCpuArray<MapData, u64>>,
    malformed: Arc<PerCpuArray<MapData, u64>>,
    /// The blocked fingerprints by shape and their drop counters (`crate::xdp::fp_index`).
    fingerprints: Arc<(Array<MapData, ShapeSet>, PerCpuArray<MapData, u64>)>,
}

impl XdpCounters {
    pub(crate) fn new(
        map: PerCpuArray<MapData, u64>,
        malformed: PerCpuArray<MapData, u64>,
        shapes: Array<MapData, ShapeSet>,
        drops: PerCpuArray<MapData, u64>,
    ) -> XdpCounters {
        XdpCounters {
            map: Arc::new(map),
            malformed: Arc::new(malformed),
            fingerprints: Arc::new((shapes, drops)),
        }
    }

    /// The drops of every blocked fingerprint that has a way of its own (its shape holds at most
    /// `SHAPE_WAYS`), since it was blocked or the program loaded, summed over CPUs.
    ///
    /// # Errors
    /// When the kernel refuses a map lookup (it should not while the maps are open).
    pub fn read_fingerprint_drops(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        let (shapes, drops) = &*self.fingerprints;
        let sets = crate::xdp::fp_index::load_shapes(shapes)?;
        crate::xdp::fp_index::all_drops(&sets, drops)
    }

    /// Both families for `/metrics`, read at scrape time: `portcullis_xdp_packets_total{verdict}` and
    /// `portcullis_xdp_malformed_total{reason}`.
    pub fn collector(&self) -> Box<dyn Collector> {
        let verdicts = self.clone();
        let malformed = self.clone();
        let fingerprints = self.clone();
        Box::new(CounterFamilies(vec![
            Box::new(ConstCounterCollector::new(
                "portcullis_xdp_packets",
                "Packets seen by the XDP program, by verdict",
                "verdict",
                move || {
                    Ok(verdicts
                        .read()?
                        .into_iter()
                        .map(|(v, n)| (v.name().into(), n))
                        .collect())
                },
            )),
            Box::new(ConstCounterCollector::new(
                "portcullis_xdp_malformed",
                "First segments dropped by the XDP program as malformed ClientHellos, by reason",
                "reason",
                move || {
                    Ok(malformed
                        .read_malformed()?
                        .into_iter()
                        .map(|(r, n)| (r.name().into(), n))
                        .collect())
                },
            )),
            Box::new(ConstCounterCollector::new(
                "portcullis_xdp_fingerprint_drops",
                "ClientHellos the XDP program dropped for each blocked fingerprint, since it was blocked (or the \
                 program loaded); a fingerprint whose shape holds more than 7 blocked ones is counted only in \
                 portcullis_xdp_packets_total{verdict=\"drop_blocked_fingerprint\"}",
                "fingerprint",
                move || {
                    Ok(fingerprints
                        .read_fingerprint_drops()?
                        .into_iter()
                        .map(|(f, n)| {
                            (
                                String::from_utf8_lossy(&fingerprint_hex(f))
                                    .into_owned()
                                    .into(),
                                n,
                            )
                        })
                        .collect())
                },
            )),
        ]))
    }

    /// The count of every malformed-ClientHello reason since the program was loaded, summed over CPUs, in
    /// [`Malformed::ALL`] order.
    ///
    /// # Errors
    /// When the kernel refuses the map lookup (it should not while the map is open).
    pub fn read_malformed(&self) -> anyhow::Result<Vec<(Malformed, u64)>> {
        malformed_totals(&*self.malformed)
    }

    /// The packet count of every verdict since the program was loaded, summed over CPUs, in
    /// [`Verdict::ALL`] order.
    ///
    /// # Errors
    /// When the kernel refuses the map lookup (it should not while the map is open).
    pub fn read(&self) -> anyhow::Result<Vec<(Verdict, u64)>> {
        verdict_totals(&*self.map)
    }
}

/// The count of every verdict in `map` (the daemon's own, or the pin `portcullis xdp` opens), summed over CPUs, in
/// [`Verdict::ALL`] order.
///
/// # Errors
/// When the kernel refuses a map lookup.
pub(crate) fn verdict_totals<T: Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> anyhow::Result<Vec<(Verdict, u64)>> {
    Verdict::ALL
        .iter()
        .map(|&verdict| {
            let per_cpu = map.get(&verdict.index(), 0).with_context(|| {
                format!(
                    "cannot read XDP counter `{}` from map `{MAP_XDP_VERDICTS}`",
                    verdict.name()
                )
            })?;
            Ok((verdict, per_cpu_total(&per_cpu)))
        })
        .collect()
}

/// The count of every malformed-ClientHello reason in `map`, summed over CPUs, in [`Malformed::ALL`] order.
///
/// # Errors
/// When the kernel refuses a map lookup.
pub(crate) fn malformed_totals<T: Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> anyhow::Result<Vec<(Malformed, u64)>> {
    Malformed::ALL
        .iter()
        .map(|&reason| {
            let per_cpu = map.get(&(reason as u32), 0).with_context(|| {
                format!(
                    "cannot read counter `{}` from map `{MAP_XDP_MALFORMED}`",
                    reason.name()
                )
            })?;
            Ok((reason, per_cpu_total(&per_cpu)))
        })
        .collect()
}

impl std::fmt::Debug for XdpCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCounters")
            .field("map", &MAP_XDP_VERDICTS)
            .finish()
    }
}

/// Labels of `portcullis_xdp_attached`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AttachedLabels {
    /// The network interface.
    interface: String,
    /// `native` (in the driver) or `generic` (after the kernel built an skb).
    mode: &'static str,
}

/// Registers `portcullis_xdp_attached{interface,mode}`: 1 for each interface the guard is attached to. An alert can
/// then see a guard that runs in generic mode (`mode = "auto"` falls back to it, with one log line, when the driver
/// refuses native XDP), or hosts where it is not attached at all.
pub(crate) fn register_attached(
    registry: &mut prometheus_client::registry::Registry,
    attachments: &[(String, crate::xdp::XdpMode)],
) {
    let family = prometheus_client::metrics::family::Family::<
        AttachedLabels,
        prometheus_client::metrics::gauge::Gauge,
    >::default();
    for (interface, mode) in attachments {
        family
            .get_or_create(&AttachedLabels {
                interface: interface.clone(),
                mode: mode.name(),
            })
            .set(1);
    }
    registry.register(
        "portcullis_xdp_attached",
        "Interfaces the XDP handshake guard is attached to, by mode (native: in the driver; generic: after the \
         kernel built an skb, same verdicts at a higher cost per packet), 1 each",
        family,
    );
}

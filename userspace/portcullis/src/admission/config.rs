//! The `[admission]` config section.

use std::time::Duration;

use serde::Deserialize;

/// Admission control in front of the offload engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Turn admission control on. Default: `true`.
    pub enabled: bool,
    /// Queue-delay target: when the minimum ring wait over `interval` exceeds it (and 12 size-biased mean
    /// handshake costs, see `admission::burst`) while the engine is saturated, new full handshakes are shed. A duration, at most `"10s"`. Default: `"5ms"`.
    #[serde(with = "humantime_serde")]
    pub target: Duration,
    /// Measurement interval of the controller. A duration, at most `"60s"`. Default: `"100ms"`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive good intervals before `recovering` returns to `normal`. Unit: intervals, at most 10000. Default: 5.
    pub recover_intervals: u32,
    /// Estimated work (sum of each admitted handshake's learned cost) allowed queued or in service per engine
    /// instance in normal operation, at least: it bounds how long an admitted handshake can wait. The budget
    /// grows to what Poisson arrivals at 80% load stay within (see `admission::burst`), so bursts below
    /// overload are queued, not shed. Resumptions may go 50% beyond (and the engine serves them first); while
    /// overloaded (the burst exceeded, XDP shedding SYNs, or the controller not `normal`), the budget is only
    /// twice `target`. A duration, at most `"10s"`. Default: `"20ms"`.
    #[serde(with = "humantime_serde")]
    pub queue_budget: Duration,
    /// Handshakes one worker may have in flight (admitted, not finished). Unit: handshakes, at most 1048576. Default: 1024.
    pub max_in_flight_per_worker: usize,
    /// With XDP attached: the largest fraction of new SYNs (0.0 to 1.0) the XDP program may drop. Every
    /// `interval` admission control sets the fraction so that about 25% more connections reach userspace than
    /// it admits (see `admission::syn_shed`); their clients' TCP retransmits after 1 s, 3 s, ...: the cheapest
    /// shedding there is. 0.0 turns SYN shedding off. Default: `0.95` (enough for a 10x storm to reach
    /// userspace at about capacity).
    pub syn_shed: f64,
    /// With XDP attached: how long after the last interval that shed new SYNs the XDP program goes on dropping
    /// retransmitted SYNs of flows it shed (at `syn_shed`), so a storm's retransmissions (1 s, 3 s, 7 s after
    /// each first SYN) do not crowd out clients arriving after it. A duration, at most `"1h"`. Default: `"4s"`.
    #[serde(with = "humantime_serde")]
    pub syn_retry_hold: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
            recover_intervals: 5,
            queue_budget: Duration::from_millis(20),
            max_in_flight_per_worker: 1024,
            syn_shed: 0.95,
            syn_retry_hold: Duration::from_secs(4),
        }
    }
}

impl AdmissionConfig {
    /// Checks values; returns the offending field's name and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("admission.target", self.target),
            ("admission.interval", self.interval),
            ("admission.queue_budget", self.queue_budget),
        ];
        for (field, d) in positive {
            if d.is_zero() {
                return Err((field, "must be greater than zero".to_owned()));
            }
        }
        if self.recover_intervals == 0 {
            return Err((
                "admission.recover_intervals",
                "must be at least 1".to_owned(),
            ));
        }
        if !(0.0..=1.0).contains(&self.syn_shed) {
            return Err((
                "admission.syn_shed",
                "a fraction from 0.0 to 1.0".to_owned(),
            ));
        }
        crate::config::at_most("admission.target", self.target, Duration::from_secs(10))?;
        crate::config::at_most("admission.interval", self.interval, Duration::from_secs(60))?;
        crate::config::at_most(
            "admission.queue_budget",
            self.queue_budget,
            Duration::from_secs(10),
        )?;
        crate::config::at_most(
            "admission.syn_retry_hold",
            self.syn_retry_hold,
            Duration::from_secs(3600),
        )?;
        crate::config::count_at_most(
            "admission.recover_intervals",
            self.recover_intervals as usize,
            10_000,
        )?;
        crate::config::count_at_most(
            "admission.max_in_flight_per_worker",
            self.max_in_flight_per_worker,
            1 << 20,
        )?;
        if self.max_in_flight_per_worker == 0 {
            return Err((
                "admission.max_in_flight_per_worker",
                "must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

//! The `[engine]` config section: where the expensive handshake step runs.

use std::time::Duration;

use serde::Deserialize;

/// Which engine runs the expensive step (`Accepted::into_connection`: certificate, key exchange, signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Crypto threads with bounded request rings, QAT-style (default).
    Software,
    /// On the worker thread, no queue: for comparison.
    Inline,
}

/// What to do when every ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FullRingPolicyConfig {
    /// Close the connection before any crypto is spent (default): overload stays bounded.
    Reject,
    /// Run the step on the worker thread instead.
    Inline,
    /// Wait for a free slot; a handshake whose queue wait (for the slot and in the ring) passes
    /// `wait_deadline` is rejected, without any crypto.
    Wait,
}

/// The `[engine]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `"software"` or `"inline"`. Default: `"software"`.
    pub kind: EngineKind,
    /// Engine instances (crypto threads, one ring each). Unit: threads, at most 1024. Default: the number of workers.
    pub instances: Option<usize>,
    /// Depth of each instance's request ring; a power of two. Unit: handshakes. Default: 256.
    pub ring_depth: usize,
    /// `"reject"`, `"inline"` or `"wait"`. Default: `"reject"`.
    pub full_ring: FullRingPolicyConfig,
    /// With `full_ring = "wait"`: the longest a handshake waits before a crypto thread starts on it, for a
    /// ring slot and in the ring together; a handshake that reaches its crypto thread later is dropped there
    /// unserved. A duration, at most `"60s"`. Default: `"50ms"`.
    #[serde(with = "humantime_serde")]
    pub wait_deadline: Duration,
    /// Run a handshake's expensive step on its worker, skipping the crypto-thread hop (two thread wake-ups),
    /// when the engine is idle (every ring empty, no job in service), the handshake is a resumption (its step
    /// costs little more than the hop), or the crypto threads can only run on the worker's own CPU (`taskset` to
    /// one core: the hop buys no parallelism), admission control is not overloaded, the step is not an RSA signature,
    /// and the worker spent less than half of the last 10 ms on such inline steps. Admission control still
    /// admits and learns from it (queue wait 0). Default: true.
    pub inline_when_idle: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Software,
            instances: None,
            ring_depth: 256,
            full_ring: FullRingPolicyConfig::Reject,
            wait_deadline: Duration::from_millis(50),
            inline_when_idle: true,
        }
    }
}

impl EngineConfig {
    /// Checks values; returns the offending field's name and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.ring_depth.is_power_of_two() || self.ring_depth > 1 << 20 {
            return Err((
                "engine.ring_depth",
                format!(
                    "{} is not a power of two between 1 and 1048576",
                    self.ring_depth
                ),
            ));
        }
        if self.instances == Some(0) {
            return Err(("engine.instances", "must be at least 1".to_owned()));
        }
        crate::config::count_at_most(
            "engine.instances",
            self.instances.unwrap_or(1),
            crate::config::MAX_WORKERS,
        )?;
        crate::config::at_most(
            "engine.wait_deadline",
            self.wait_deadline,
            Duration::from_secs(60),
        )?;
        if self.full_ring == FullRingPolicyConfig::Wait && self.wait_deadline.is_zero() {
            return Err((
                "engine.wait_deadline",
                "must be greater than zero with full_ring = \"wait\"".to_owned(),
            ));
        }
        Ok(())
    }
}

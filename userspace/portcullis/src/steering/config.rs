//! The `[steering]` config section.

use serde::Deserialize;

/// Reuseport steering: an SK_REUSEPORT program picks each new connection's worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteeringConfig {
    /// Attach the steering program to every listener's SO_REUSEPORT group: new connections are spread by flow
    /// hash over the workers that admission control has not marked saturated. If the program cannot be loaded
    /// (binary built without the BPF object, no CAP_BPF), the daemon logs a warning and the kernel's own hash
    /// spreads connections. With one worker there is nothing to steer and it is not loaded. Its maps are
    /// pinned under `xdp.pin_dir` (give each daemon on a host its own). Default: `true`.
    pub enabled: bool,
    /// Prefer the worker pinned to the CPU that received the packet, when it is not saturated (needs
    /// `pin_workers`; CPUs without a pinned worker use the flow hash). Default: `false`.
    pub prefer_local_cpu: bool,
}

impl Default for SteeringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefer_local_cpu: false,
        }
    }
}

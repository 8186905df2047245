//! The guard's runtime configuration, written by the daemon into [`XDP_CONFIG`] (before attaching, and whenever
//! an operator or admission control turns a knob).

use aya_ebpf::{btf_maps::Array, macros::btf_map};
use portcullis_abi::xdp_config::{XDP_CONFIG_KEY, XdpConfig};

/// The runtime configuration (listener ports); the name must match `portcullis_abi::names::MAP_XDP_CONFIG`.
/// Zero-filled until the daemon writes it, which reads as "no listener port".
#[btf_map(name = "xdp_config")]
pub(crate) static XDP_CONFIG: Array<XdpConfig, 1> = Array::new();

/// The runtime configuration, or the empty one (no listener port) if the lookup fails (it cannot: index 0).
#[inline(always)]
pub(crate) fn config() -> &'static XdpConfig {
    XDP_CONFIG.get(XDP_CONFIG_KEY).unwrap_or(&XdpConfig::EMPTY)
}

//! What the daemon's `[xdp]` config section turns into.

use std::path::PathBuf;

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic; the mode used is logged per interface.
    #[default]
    Auto,
    /// Native (driver, `XDP_FLAGS_DRV_MODE`) only: starting fails on a driver without XDP support.
    Native,
    /// Generic (`XDP_FLAGS_SKB_MODE`): runs after the kernel allocated the skb; works on any interface, slower.
    Generic,
}

impl XdpMode {
    /// The config spelling of this mode (`auto`, `native`, `generic`).
    pub const fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// Everything [`super::XdpGuard::start`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpSettings {
    /// Interfaces to attach to, by name, in the daemon's network namespace. Must not be empty.
    pub interfaces: Vec<String>,
    /// Attach mode, the same for every interface.
    pub mode: XdpMode,
    /// TCP ports the daemon listens on (resolved, never 0): packets to them count as `pass_listener_tcp`.
    /// At most [`portcullis_abi::xdp_config::MAX_LISTENER_PORTS`] distinct ports.
    pub ports: Vec<u16>,
    /// SYNs per second each source prefix may send to the listener ports; 0 = no SYN budget.
    pub syn_rate: u32,
    /// SYNs a source prefix may send at once (bucket size, at least 1).
    pub syn_burst: u32,
    /// ClientHellos (full handshakes) per second each source prefix may send; 0 = no ClientHello budget.
    pub hello_rate: u32,
    /// ClientHellos (full handshakes) a source prefix may send at once (bucket size, at least 1).
    pub hello_burst: u32,
    /// What a resumption offer costs, in thousandths of a full handshake (1..=1000).
    pub hello_resume_cost_milli: u32,
    /// Bits of an IPv4 source that share one budget (0..=32).
    pub source_prefix_v4: u8,
    /// Bits of an IPv6 source that share one budget (0..=128).
    pub source_prefix_v6: u8,
    /// Drop what the guard rejects (true) or only count it (false, a dry run).
    pub enforce: bool,
    /// Directory on the BPF filesystem where the maps are pinned, one file per map named as the map (default
    /// [`portcullis_abi::names::DEFAULT_PIN_DIR`]). Created if missing.
    pub pin_dir: PathBuf,
}

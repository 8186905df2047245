//! The daemon's `[xdp]` config section ([`XdpSection`]), its attach mode, and the one mapping of its knobs onto
//! the value the program reads (the ABI's [`XdpConfig`]).

use std::path::PathBuf;

use portcullis_abi::xdp_config::XdpConfig;
use serde::Deserialize;

/// The knobs of `[xdp]` the program reads from its config map on every packet: `portcullis xdp set` may change
/// them on a live host (`super::knobs`); the other keys take a restart.
pub(crate) const KNOBS: [&str; 12] = [
    "enforce",
    "syn_rate",
    "syn_burst",
    "flood_syn_rate",
    "flood_syn_burst",
    "known_ttl",
    "malformed_penalty_ms",
    "hello_rate",
    "hello_burst",
    "hello_resume_cost",
    "source_prefix_v4",
    "source_prefix_v6",
];

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
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

/// The `[xdp]` section of the config file: the XDP handshake guard. Disabled unless `interfaces` is non-empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpSection {
    /// Interfaces to attach to. Default: none (XDP disabled).
    pub interfaces: Vec<String>,
    /// Attach mode: `"auto"`, `"native"` or `"generic"`. Default: `"auto"`.
    pub mode: XdpMode,
    /// Directory on bpffs where maps are pinned (inspect with `bpftool map dump pinned DIR/NAME`).
    /// Default: `/sys/fs/bpf/portcullis`.
    pub pin_dir: PathBuf,
    /// SYNs per second each source prefix may send to the listener ports; over budget they are dropped in
    /// XDP (`portcullis_xdp_packets_total{verdict="drop_syn_rate"}`). 0 turns the budget off. Default: 0.
    /// The guard tracks 4,096 sources per budget (`portcullis_abi::limits::BudgetSet`: 2-way sets, a source that
    /// spent its budget pushed out last).
    pub syn_rate: u32,
    /// SYNs a source prefix may send at once after being idle (the token bucket size), at least 1.
    /// Default: 100.
    pub syn_burst: u32,
    /// SYNs per second, per CPU that runs the guard, that sources the guard does not know may send to the listener
    /// ports together: a source is known for `known_ttl` seconds after a ClientHello the guard passed. Over it,
    /// unknown sources' SYNs are dropped in XDP (`portcullis_xdp_packets_total{verdict="drop_syn_flood"}`) and
    /// known ones pass: a spoofed-source SYN flood (every SYN a new source, so no per-source budget runs out)
    /// never reaches the kernel's receive backlog and SYN cookies. Legitimate new clients compete with the flood
    /// for this budget (their SYN retransmissions retry it). Size it under the SYNs per second one CPU's kernel
    /// answers without dropping (BENCHMARKS.md, "Floods"). 0 turns it off. Default: 0.
    pub flood_syn_rate: u32,
    /// The flood budget's bucket per CPU, in SYNs, at least 1. Default: 1000.
    pub flood_syn_burst: u32,
    /// Seconds a source stays known after its last ClientHello the guard passed, 1 to 86,400. The guard keeps
    /// 8,192 known sources (8-way sets, the oldest pushed out first; `portcullis xdp status` counts them).
    /// Default: 600.
    pub known_ttl: u32,
    /// Milliseconds a source prefix's SYNs are dropped in XDP
    /// (`portcullis_xdp_packets_total{verdict="drop_syn_penalty"}`) after its first segment was a malformed
    /// ClientHello, 0 to 600,000: its SYN budget is emptied and refills only after. A junk sender then stops
    /// costing an accept per connection; everyone behind the same prefix (a NAT) is refused as long, unless the
    /// prefix is known (a ClientHello passed within `known_ttl`: those are spared). Needs `syn_rate`. 0 = no
    /// penalty. Default: 5000.
    pub malformed_penalty_ms: u32,
    /// ClientHellos per second each source prefix (the same prefixes as the SYN budget) may send, counted in
    /// full handshakes; over budget the first segment is dropped in XDP
    /// (`portcullis_xdp_packets_total{verdict="drop_hello_rate"}`), and, with `syn_rate` on, the prefix's SYNs
    /// too until its budget holds a token again (`1 / hello_rate` seconds, `drop_syn_penalty`, known prefixes
    /// included): a connection opened before then would only have its ClientHello dropped, after costing the
    /// server a TCP handshake, an accept and a reset. 0 turns the budget off. Default: 0.
    pub hello_rate: u32,
    /// ClientHellos (full handshakes) a source prefix may send at once after being idle, at least 1.
    /// Default: 20.
    pub hello_burst: u32,
    /// What a resumption offer (TLS 1.3 PSK or TLS 1.2 ticket: no certificate signature to pay for) costs of
    /// the ClientHello budget, as a fraction of a full handshake, greater than 0 and at most 1. Default: 0.25.
    pub hello_resume_cost: f64,
    /// Bits of an IPv4 source address that share one budget, 0 to 32. Default: 32 (per address).
    pub source_prefix_v4: u8,
    /// Bits of an IPv6 source address that share one budget, 0 to 128. Default: 64 (per /64).
    pub source_prefix_v6: u8,
    /// `true`: drop what the guard rejects. `false`: only count it (dry run; the drop verdicts still move).
    /// Default: `true`.
    pub enforce: bool,
}

impl XdpSection {
    /// Checks the budget and enforcement fields (those `portcullis xdp set` may change at run time too): the
    /// field at fault, without the `xdp.` prefix, and why.
    ///
    /// # Errors
    /// The first field out of its range.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.syn_burst == 0 {
            return Err(("syn_burst", "must be at least 1"));
        }
        if self.flood_syn_burst == 0 {
            return Err(("flood_syn_burst", "must be at least 1"));
        }
        if !(1..=86_400).contains(&self.known_ttl) {
            return Err(("known_ttl", "must be 1 to 86400 (seconds)"));
        }
        if self.malformed_penalty_ms > 600_000 {
            return Err((
                "malformed_penalty_ms",
                "must be 0 to 600000 (milliseconds; 0 = no penalty)",
            ));
        }
        if self.hello_burst == 0 {
            return Err(("hello_burst", "must be at least 1"));
        }
        if !(self.hello_resume_cost > 0.0 && self.hello_resume_cost <= 1.0) {
            return Err((
                "hello_resume_cost",
                "must be greater than 0 and at most 1 (a fraction of a full handshake)",
            ));
        }
        if self.source_prefix_v4 > 32 {
            return Err(("source_prefix_v4", "must be 0 to 32"));
        }
        if self.source_prefix_v6 > 128 {
            return Err(("source_prefix_v6", "must be 0 to 128"));
        }
        Ok(())
    }

    /// [`XdpSection::hello_resume_cost`] in the thousandths of a full handshake the XDP program counts in
    /// (1..=1000; the value is validated to lie in (0, 1]).
    pub fn hello_resume_cost_milli(&self) -> u32 {
        // In range after `validate`; the clamp keeps an unvalidated value from reaching the program as 0
        // (which the program reads as "full price").
        (self.hello_resume_cost * 1000.0).round().clamp(1.0, 1000.0) as u32
    }
    /// Writes every knob of this section into the value the program reads (the one mapping from the file's
    /// section to the ABI's [`XdpConfig`]; `portcullis xdp set` writes one knob through [`Self::write_knob`]).
    pub(crate) fn write_knobs(&self, abi: &mut XdpConfig) {
        for key in KNOBS {
            self.write_knob(key, abi);
        }
    }

    /// Writes the knob `key` (one of [`KNOBS`]) of this section into `abi`; any other key writes nothing.
    pub(crate) fn write_knob(&self, key: &str, abi: &mut XdpConfig) {
        match key {
            "enforce" => abi.enforce = u32::from(self.enforce),
            "syn_rate" => abi.syn_rate = self.syn_rate,
            "syn_burst" => abi.syn_burst = self.syn_burst,
            "flood_syn_rate" => abi.flood_syn_rate = self.flood_syn_rate,
            "flood_syn_burst" => abi.flood_syn_burst = self.flood_syn_burst,
            "known_ttl" => abi.known_ttl_s = self.known_ttl,
            "malformed_penalty_ms" => abi.malformed_penalty_ms = self.malformed_penalty_ms,
            "hello_rate" => abi.hello_rate = self.hello_rate,
            "hello_burst" => abi.hello_burst = self.hello_burst,
            "hello_resume_cost" => abi.hello_resume_cost_milli = self.hello_resume_cost_milli(),
            "source_prefix_v4" => abi.v4_prefix_len = u32::from(self.source_prefix_v4),
            "source_prefix_v6" => abi.v6_prefix_len = u32::from(self.source_prefix_v6),
            _ => {}
        }
    }
}

impl Default for XdpSection {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: XdpMode::Auto,
            pin_dir: PathBuf::from(portcullis_abi::names::DEFAULT_PIN_DIR),
            syn_rate: 0,
            syn_burst: 100,
            flood_syn_rate: 0,
            flood_syn_burst: 1000,
            known_ttl: 600,
            malformed_penalty_ms: 5000,
            hello_rate: 0,
            hello_burst: 20,
            hello_resume_cost: 0.25,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            enforce: true,
        }
    }
}

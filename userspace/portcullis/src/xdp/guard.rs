//! [`XdpGuard`]: owns the loaded XDP program for the daemon's lifetime.

use anyhow::{Context as _, bail};
use aya::{
    EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::Xdp,
};
use portcullis_abi::{
    fp_shapes::ShapeSet,
    limits::{ADDR_LEN, BudgetSet},
    names::{
        MAP_XDP_BLOCK_FP, MAP_XDP_BLOCK_FP_COUNT, MAP_XDP_BLOCK_FP_DROPS, MAP_XDP_BLOCK_FP_SHAPES,
        MAP_XDP_BLOCK_NET, MAP_XDP_BLOCK_NET_FILTER, MAP_XDP_BUDGET_SEED, MAP_XDP_CONFIG,
        MAP_XDP_DROP_RING, MAP_XDP_FLOWS, MAP_XDP_HELLO_BUDGET, MAP_XDP_HELLO_PROG, MAP_XDP_KNOWN,
        MAP_XDP_MALFORMED, MAP_XDP_SYN_BUDGET, MAP_XDP_VERDICTS, PROG_XDP, PROG_XDP_HELLO,
    },
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
};

use super::{
    XdpCounters, XdpSection,
    attach::{Attachment, attach},
    block_filter, budget_seed, fp_index, hello_prog,
    logs::{LogPump, bpf_log_level},
    object,
    pins::{Persistent, Pins, reusable_pin},
    refusal,
};

/// Maps pinned for good (not removed on detach) and reused by the next start: per-source SYN and ClientHello
/// budgets, so a restart does not hand every flooding source a fresh burst, and the operator's blocklists.
const PERSISTENT_MAPS: [Persistent; 5] = [
    Persistent {
        name: MAP_XDP_SYN_BUDGET,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<BudgetSet>() as u32,
    },
    // The key of the budget tables' slots: a new seed would move every source to another slot, losing its budget.
    Persistent {
        name: MAP_XDP_BUDGET_SEED,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<u64>() as u32,
    },
    Persistent {
        name: MAP_XDP_BLOCK_NET,
        // LPM trie key: a u32 prefix length, then the address.
        key_size: (4 + ADDR_LEN) as u32,
        value_size: 1,
    },
    Persistent {
        name: MAP_XDP_HELLO_BUDGET,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<BudgetSet>() as u32,
    },
    Persistent {
        name: MAP_XDP_BLOCK_FP,
        key_size: size_of::<u64>() as u32,
        value_size: 1,
    },
];

/// The XDP program, loaded and attached. Dropping it (or [`XdpGuard::detach`], which reports errors) detaches it
/// from every interface and removes the pins it created.
#[derive(Debug)]
pub struct XdpGuard {
    counters: XdpCounters,
    running: Running,
}

/// What must be undone, filled in step by step by [`XdpGuard::start`] so that a failure half-way drops it and
/// undoes exactly the steps done.
struct Running {
    /// Owns the program, whose links detach when it is dropped; `None` once torn down.
    ebpf: Option<aya::Ebpf>,
    attachments: Vec<Attachment>,
    pins: Pins,
    logs: Option<LogPump>,
    /// `[xdp] pin_dir`, where links are pinned for a successor.
    pin_dir: std::path::PathBuf,
}

impl XdpGuard {
    /// Loads the embedded BPF object, writes the listener ports into its config map, attaches it to every
    /// configured interface, pins its maps under `section.pin_dir` and starts forwarding its logs to `tracing`.
    ///
    /// # Errors
    /// Each names the interface, path or setting at fault and what to do: the binary was built without the BPF
    /// object, no interface or too many ports are configured, an interface does not exist, the process lacks
    /// root/CAP_BPF, the pin directory is not on bpffs, the verifier rejected the program. Whatever was set up
    /// before the failure is torn down again.
    pub fn start(section: &XdpSection, ports: &[u16]) -> anyhow::Result<XdpGuard> {
        Self::start_with(section, ports, None)
    }

    /// Like [`XdpGuard::start`], but replaces the program of a running daemon on its links (atomically, with
    /// `bpf_link_update`) instead of attaching, and reuses its flow table besides the state maps (`upgrade`).
    ///
    /// # Errors
    /// As [`XdpGuard::start`], and a link of `offer` that cannot be opened or updated.
    pub fn take_over(
        section: &XdpSection,
        ports: &[u16],
        offer: &crate::upgrade::protocol::XdpOffer,
    ) -> anyhow::Result<XdpGuard> {
        Self::start_with(section, ports, Some(offer))
    }

    fn start_with(
        section: &XdpSection,
        ports: &[u16],
        inherit: Option<&crate::upgrade::protocol::XdpOffer>,
    ) -> anyhow::Result<XdpGuard> {
        if section.interfaces.is_empty() {
            bail!(
                "[xdp] interfaces is empty; name at least one interface or remove the [xdp] section"
            );
        }
        let config = program_config(section, ports)?;
        let (ebpf, pins) = load(section, inherit.is_some())?;
        // From here on, an early return drops `running`, which undoes what was done so far.
        let mut running = Running {
            ebpf: None,
            attachments: Vec::new(),
            pins,
            logs: None,
            pin_dir: section.pin_dir.clone(),
        };
        let ebpf = running.ebpf.insert(ebpf);
        write_config(ebpf, config)?;
        let index = restore_blocklists(ebpf)?;
        attach_programs(&mut running, section, inherit)?;
        pin_run_maps(&mut running, section)?;
        let counters = take_counters(&mut running)?;
        tracing::info!(
            interfaces = ?section.interfaces,
            ports = ?config.listener_ports(),
            pin_dir = %section.pin_dir.display(),
            pins = ?running.pins.files(),
            syn_rate = config.syn_rate,
            syn_burst = config.syn_burst,
            hello_rate = config.hello_rate,
            hello_burst = config.hello_burst,
            enforce = section.enforce,
            blocked_fingerprints = index.count,
            blocked_shapes = index.shapes_set(),
            "XDP handshake guard running"
        );
        Ok(XdpGuard { counters, running })
    }

    /// A handle on the verdict counters, for the metrics endpoint.
    pub fn counters(&self) -> XdpCounters {
        self.counters.clone()
    }

    /// Where the program is attached: each interface and the mode it runs in there (`auto` may have fallen back
    /// to generic), for `portcullis_xdp_attached`.
    pub fn attachments(&self) -> Vec<(String, super::XdpMode)> {
        self.running
            .attachments
            .iter()
            .map(|a| (a.interface.clone(), a.mode))
            .collect()
    }

    /// Detaches from every interface and removes the pins this guard created, reporting the first failure.
    ///
    /// # Errors
    /// A link the kernel refused to detach or a pin that could not be removed; the rest is still torn down.
    pub fn detach(mut self) -> anyhow::Result<()> {
        self.running.teardown()
    }

    /// Pins each attachment's bpf_link under the pin directory for a successor ([`XdpGuard::take_over`]); the
    /// links stay this process's too. The pins are removed by the successor, by [`XdpGuard::unpin_links`], or
    /// at detach.
    ///
    /// # Errors
    /// A link that is not a bpf_link (netlink attachment on an old kernel), or a pin that fails: that link is
    /// then closed, and the interface unguarded until the next start.
    pub fn pin_links(&mut self) -> anyhow::Result<crate::upgrade::protocol::XdpOffer> {
        use aya::programs::{links::FdLink, xdp::XdpLink};
        let pin_dir = self.running.pin_dir.clone();
        let Some(ebpf) = self.running.ebpf.as_mut() else {
            bail!("the XDP program is torn down");
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .context("no XDP program")?
            .try_into()?;
        let mut links = Vec::new();
        for attachment in std::mem::take(&mut self.running.attachments) {
            let Attachment {
                interface,
                mode,
                link,
            } = attachment;
            let path = super::pins::link_pin(&pin_dir, &interface);
            let _ = std::fs::remove_file(&path);
            let fd: FdLink = program.take_link(link)?.try_into().with_context(|| {
                format!("XDP on `{interface}` is attached through netlink, not a bpf_link: upgrade needs Linux 5.9+")
            })?;
            let pinned = fd.pin(&path).with_context(|| {
                format!(
                    "cannot pin the XDP link of `{interface}` at {}",
                    path.display()
                )
            })?;
            let link = XdpLink::try_from(FdLink::from(pinned))?;
            // The same program: the kernel leaves the link as it is, and the program owns it again.
            let link = program.attach_to_link(link)?;
            self.running.attachments.push(Attachment {
                interface: interface.clone(),
                mode,
                link,
            });
            links.push(crate::upgrade::protocol::LinkOffer {
                interface,
                mode: mode.name().to_owned(),
                pin: path,
            });
        }
        Ok(crate::upgrade::protocol::XdpOffer { pin_dir, links })
    }

    /// Removes the link pins made by [`XdpGuard::pin_links`] after a failed handoff (this process's links stay).
    pub fn unpin_links(&self) {
        for a in &self.running.attachments {
            let _ =
                std::fs::remove_file(super::pins::link_pin(&self.running.pin_dir, &a.interface));
        }
    }

    /// After a successor took over: closes this process's program and links without removing any pin (they are
    /// the successor's now).
    pub fn hand_over(mut self) {
        self.running.pins.forget();
        let _ = self.running.teardown();
    }
}

/// The value the program reads: the listener ports, the section's knobs, the budget clock.
fn program_config(section: &XdpSection, ports: &[u16]) -> anyhow::Result<XdpConfig> {
    let mut config = XdpConfig::new(ports).context("invalid listener ports for XDP")?;
    section.write_knobs(&mut config);
    (config.jiffy_ns, config.jiffies_origin) = super::clock::jiffies();
    Ok(config)
}

/// Loads the embedded object with its persistent maps opened from (or pinned to) the pin directory, which must
/// exist before loading.
fn load(section: &XdpSection, inherit: bool) -> anyhow::Result<(aya::Ebpf, Pins)> {
    let object = object::embedded()?;
    let mut pins = Pins::default();
    pins.prepare_dir(&section.pin_dir)?;
    pins.replacing_predecessor = inherit;
    let mut persistent = Vec::new();
    // Taking over, the flow table is the running program's too: the flows it admitted stay admitted.
    let flows = Persistent {
        name: MAP_XDP_FLOWS,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<portcullis_abi::flow::FlowSet>() as u32,
    };
    for map in PERSISTENT_MAPS.into_iter().chain(inherit.then_some(flows)) {
        persistent.push((map.name, reusable_pin(&section.pin_dir, map)?));
    }
    let log_level = bpf_log_level();
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &log_level, true);
    for (name, path) in &persistent {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .load(object)
        .map_err(anyhow::Error::new)
        .map_err(|e| refusal::explain("the embedded BPF object (maps, BTF)", e))
        .context("cannot load the embedded BPF object (maps, BTF)")?;
    Ok((ebpf, pins))
}

/// Writes the program's config value, before it sees a packet.
fn write_config(ebpf: &mut aya::Ebpf, config: XdpConfig) -> anyhow::Result<()> {
    let mut config_map: Array<_, XdpConfig> = object::typed_map(
        ebpf.map_mut(MAP_XDP_CONFIG),
        MAP_XDP_CONFIG,
        "an array of XdpConfig",
    )?;
    config_map
        .set(XDP_CONFIG_KEY, config, 0)
        .with_context(|| format!("cannot write map `{MAP_XDP_CONFIG}`"))
}

/// The blocklists are pinned for good and may have changed while the daemon was down: rebuilds the fingerprint
/// blocklist's count and shapes (or a blocked fingerprint would not be computed, `fp_index`) and the CIDR
/// blocklist's prefilter (or a prefix blocked meanwhile would not block), and keeps the budget tables' hash key.
fn restore_blocklists(ebpf: &mut aya::Ebpf) -> anyhow::Result<fp_index::Index> {
    let blocked: HashMap<&MapData, u64, u8> = object::typed_map(
        ebpf.map(MAP_XDP_BLOCK_FP),
        MAP_XDP_BLOCK_FP,
        "a hash of u64",
    )?;
    let index = fp_index::of(&blocked);
    if index.other_format != 0 {
        tracing::warn!(
            stale = index.other_format,
            "the pinned fingerprint blocklist holds {} value(s) that are not fingerprints of this version's format \
             (format 1, from before 2026-11-23, or written with bpftool): they block nothing. List them with \
             `portcullis xdp block-fingerprint list`, remove them with `block-fingerprint del`, and block what \
             `portcullis fingerprint` prints now",
            index.other_format
        );
    }
    let [count, shapes, drops] = ebpf.maps_disjoint_mut([
        MAP_XDP_BLOCK_FP_COUNT,
        MAP_XDP_BLOCK_FP_SHAPES,
        MAP_XDP_BLOCK_FP_DROPS,
    ]);
    let mut count: Array<&mut MapData, u32> =
        object::typed_map(count, MAP_XDP_BLOCK_FP_COUNT, "an array of u32")?;
    let mut shapes: Array<&mut MapData, ShapeSet> =
        object::typed_map(shapes, MAP_XDP_BLOCK_FP_SHAPES, "an array of 64-byte sets")?;
    let mut drops: PerCpuArray<&mut MapData, u64> =
        object::typed_map(drops, MAP_XDP_BLOCK_FP_DROPS, "a per-CPU array of u64")?;
    fp_index::store(&index, &mut count, &mut shapes, Some(&mut drops))?;

    let trie: LpmTrie<&MapData, [u8; ADDR_LEN], u8> = object::typed_map(
        ebpf.map(MAP_XDP_BLOCK_NET),
        MAP_XDP_BLOCK_NET,
        "an LPM trie of 16-byte keys",
    )?;
    let prefilter = block_filter::of(&trie)?;
    let mut filter: Array<&mut MapData, u64> = object::typed_map(
        ebpf.map_mut(MAP_XDP_BLOCK_NET_FILTER),
        MAP_XDP_BLOCK_NET_FILTER,
        "an array of u64",
    )?;
    block_filter::store(&mut filter, &prefilter)?;

    // The budget tables' set hash is keyed (`portcullis_abi::limits::BudgetSet`): the first start draws the
    // key, later ones keep the pinned one so every source keeps its set and budget.
    let mut seed: Array<&mut MapData, u64> = object::typed_map(
        ebpf.map_mut(MAP_XDP_BUDGET_SEED),
        MAP_XDP_BUDGET_SEED,
        "an array of u64",
    )?;
    budget_seed::ensure(&mut seed)?;
    Ok(index)
}

/// Starts the log pump, installs the ClientHello program, loads, pins and attaches the XDP program.
fn attach_programs(
    running: &mut Running,
    section: &XdpSection,
    inherit: Option<&crate::upgrade::protocol::XdpOffer>,
) -> anyhow::Result<()> {
    let Some(ebpf) = running.ebpf.as_mut() else {
        bail!("the BPF object was torn down before its programs were attached");
    };
    // The logger must own the ring buffer before the program runs, or its first records are lost.
    running.logs = Some(LogPump::start(ebpf)?);

    // The ClientHello program, in the program array before the XDP program sees a packet (`hello_prog`).
    let hello = hello_prog::install(ebpf)?;
    running
        .pins
        .pin_program(hello, &section.pin_dir, PROG_XDP_HELLO)?;

    let program: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .with_context(|| {
            format!(
                "the BPF object has no program `{PROG_XDP}`; rebuild it with `cargo xtask build`"
            )
        })?
        .try_into()
        .with_context(|| {
            format!(
                "program `{PROG_XDP}` is not an XDP program; rebuild it with `cargo xtask build`"
            )
        })?;
    program
        .load()
        .map_err(anyhow::Error::new)
        .map_err(|e| refusal::explain(&format!("XDP program `{PROG_XDP}`"), e))
        .with_context(|| format!("the kernel refused to load XDP program `{PROG_XDP}`"))?;
    running
        .pins
        .pin_program(program, &section.pin_dir, PROG_XDP)?;
    for interface in &section.interfaces {
        let attachment = match inherit {
            Some(offer) => {
                let link = offer
                    .links
                    .iter()
                    .find(|l| &l.interface == interface)
                    .with_context(|| {
                        format!("the running daemon has no XDP link on `{interface}`")
                    })?;
                super::attach::take_over(program, link)?
            }
            None => attach(program, interface, section.mode)?,
        };
        running.attachments.push(attachment);
    }
    Ok(())
}

/// Pins the maps that describe this run only, for operators while it lasts (removed on detach).
fn pin_run_maps(running: &mut Running, section: &XdpSection) -> anyhow::Result<()> {
    let Some(ebpf) = running.ebpf.as_ref() else {
        bail!("the BPF object was torn down before its maps were pinned");
    };
    for name in [
        MAP_XDP_VERDICTS,
        MAP_XDP_CONFIG,
        MAP_XDP_MALFORMED,
        MAP_XDP_FLOWS,
        MAP_XDP_BLOCK_FP_COUNT,
        MAP_XDP_BLOCK_FP_SHAPES,
        MAP_XDP_BLOCK_FP_DROPS,
        MAP_XDP_BLOCK_NET_FILTER,
        MAP_XDP_HELLO_PROG,
        MAP_XDP_DROP_RING,
        MAP_XDP_KNOWN,
    ] {
        let map = ebpf
            .map(name)
            .with_context(|| format!("the BPF object has no map `{name}`"))?;
        running.pins.pin_map(map, &section.pin_dir, name)?;
    }
    Ok(())
}

/// Takes the counter maps out of the object for [`XdpCounters`] (`/metrics`).
fn take_counters(running: &mut Running) -> anyhow::Result<XdpCounters> {
    let Some(ebpf) = running.ebpf.as_mut() else {
        bail!("the BPF object was torn down before its counters were taken");
    };
    let verdicts: PerCpuArray<_, u64> = object::typed_map(
        ebpf.take_map(MAP_XDP_VERDICTS),
        MAP_XDP_VERDICTS,
        "a per-CPU array of u64",
    )?;
    let malformed: PerCpuArray<_, u64> = object::typed_map(
        ebpf.take_map(MAP_XDP_MALFORMED),
        MAP_XDP_MALFORMED,
        "a per-CPU array of u64",
    )?;
    let shapes: Array<_, ShapeSet> = object::typed_map(
        ebpf.take_map(MAP_XDP_BLOCK_FP_SHAPES),
        MAP_XDP_BLOCK_FP_SHAPES,
        "an array of 64-byte sets",
    )?;
    let drops: PerCpuArray<_, u64> = object::typed_map(
        ebpf.take_map(MAP_XDP_BLOCK_FP_DROPS),
        MAP_XDP_BLOCK_FP_DROPS,
        "a per-CPU array of u64",
    )?;
    Ok(XdpCounters::new(verdicts, malformed, shapes, drops))
}

impl Running {
    /// Undoes every step done; safe to call twice (the second call finds nothing left).
    fn teardown(&mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        if let Some(mut ebpf) = self.ebpf.take() {
            if let Some(program) = ebpf
                .program_mut(PROG_XDP)
                .and_then(|p| <&mut Xdp>::try_from(p).ok())
            {
                for Attachment {
                    interface,
                    mode,
                    link,
                } in self.attachments.drain(..)
                {
                    match program.detach(link) {
                        Ok(()) => {
                            tracing::info!(interface, mode = mode.name(), "detached XDP program")
                        }
                        Err(e) => {
                            let e = anyhow::Error::new(e)
                                .context(format!("cannot detach XDP from `{interface}`; check `ip link show {interface}`"));
                            tracing::warn!(error = %format!("{e:#}"), "XDP detach");
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            // Dropping the object closes every remaining link and unloads the program.
            drop(ebpf);
        }
        if let Err(e) = self.pins.remove_all() {
            first_error.get_or_insert(e);
        }
        if let Some(mut logs) = self.logs.take() {
            logs.stop();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Errors were logged by `teardown`; a destructor has nowhere else to report them.
        let _ = self.teardown();
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("attachments", &self.attachments)
            .field("pins", &self.pins)
            .finish()
    }
}

//! Attaching the XDP program to one interface in the requested mode.

use anyhow::{Context as _, anyhow};
use aya::programs::{Xdp, XdpMode as AyaMode, xdp::XdpLinkId};

use super::config::XdpMode;

/// One interface the program is attached to.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// Interface name, as configured.
    pub(crate) interface: String,
    /// The mode the kernel accepted (`native` or `generic`; never `auto`).
    pub(crate) mode: XdpMode,
    /// The link to detach.
    pub(crate) link: XdpLinkId,
}

/// Attaches `program` to `interface`. In [`XdpMode::Auto`], native mode is tried first and generic mode is used
/// if the driver refuses it, with a warning naming the interface and the driver's answer.
pub(crate) fn attach(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> anyhow::Result<Attachment> {
    // Checked here rather than left to aya so the error names the config field and the namespace.
    nix::net::if_::if_nametoindex(interface).map_err(|_| {
        anyhow!(
            "XDP interface `{interface}` (from [xdp] interfaces) does not exist in the daemon's network namespace; \
             check `ip link show` and fix the config"
        )
    })?;
    let attach_in = |program: &mut Xdp, mode: XdpMode| -> anyhow::Result<Attachment> {
        let aya_mode = match mode {
            XdpMode::Native => AyaMode::Driver,
            XdpMode::Generic | XdpMode::Auto => AyaMode::Skb,
        };
        let link = program.attach(interface, aya_mode).with_context(|| {
            format!(
                "cannot attach XDP in {} mode to `{interface}`; the daemon needs root or CAP_NET_ADMIN + CAP_BPF, \
                 and no other XDP program may be attached there (`ip link show {interface}`)",
                mode.name()
            )
        })?;
        Ok(Attachment {
            interface: interface.to_owned(),
            mode,
            link,
        })
    };
    let attachment = match mode {
        XdpMode::Generic => attach_in(program, mode)?,
        XdpMode::Native => attach_in(program, mode).map_err(|e| {
            e.context(format!(
                "the driver of `{interface}` may not support native XDP: set `mode = \"auto\"` or `\"generic\"` in [xdp]"
            ))
        })?,
        XdpMode::Auto => match attach_in(program, XdpMode::Native) {
            Ok(attachment) => attachment,
            Err(native_error) => {
                tracing::warn!(
                    interface,
                    error = %format!("{native_error:#}"),
                    "native XDP refused, falling back to generic (SKB) mode: slower, same verdicts"
                );
                attach_in(program, XdpMode::Generic)
                    .with_context(|| format!("native mode failed first: {native_error:#}"))?
            }
        },
    };
    tracing::info!(
        interface,
        mode = attachment.mode.name(),
        "attached XDP program"
    );
    Ok(attachment)
}

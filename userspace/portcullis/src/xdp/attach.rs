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

/// Takes over a running daemon's attachment (`upgrade`): opens its pinned bpf_link, removes the pin (the link
/// then lives as long as a process holds it, as one this process made) and replaces the program on it
/// atomically (`bpf_link_update`): no packet meets an interface without a program.
pub(crate) fn take_over(
    program: &mut Xdp,
    link: &crate::upgrade::protocol::LinkOffer,
) -> anyhow::Result<Attachment> {
    use aya::programs::{links::PinnedLink, xdp::XdpLink};
    let interface = link.interface.as_str();
    let pinned = PinnedLink::from_pin(&link.pin).with_context(|| {
        format!(
            "cannot open the running daemon's XDP link of `{interface}` at {}",
            link.pin.display()
        )
    })?;
    let fd = pinned
        .unpin()
        .with_context(|| format!("cannot remove the link pin {}", link.pin.display()))?;
    let xdp_link = XdpLink::try_from(fd)
        .with_context(|| format!("{} is not an XDP link", link.pin.display()))?;
    let id = program.attach_to_link(xdp_link).with_context(|| {
        format!("cannot replace the XDP program on `{interface}` (bpf_link_update)")
    })?;
    let mode = if link.mode == XdpMode::Native.name() {
        XdpMode::Native
    } else {
        XdpMode::Generic
    };
    tracing::info!(
        interface,
        mode = mode.name(),
        "replaced the running daemon's XDP program on its link"
    );
    Ok(Attachment {
        interface: interface.to_owned(),
        mode,
        link: id,
    })
}

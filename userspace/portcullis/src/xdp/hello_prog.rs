//! The ClientHello program ([`PROG_XDP_HELLO`]) and the program array ([`MAP_XDP_HELLO_PROG`]) through which the
//! XDP program tail-calls it with the first payload segment of a tracked flow.
//!
//! The XDP program cannot judge a ClientHello without it: until [`install`] has run (or if the array is emptied),
//! first payload segments pass unjudged, counted as `pass_listener_tcp` (fail open). So every loader of the object
//! that runs the XDP program, the daemon and the tests, installs it before the first packet.

use anyhow::Context as _;
use aya::{Ebpf, maps::ProgramArray, programs::Xdp};
use portcullis_abi::names::{MAP_XDP_HELLO_PROG, PROG_XDP_HELLO};

use super::refusal;

/// Loads the ClientHello program of `ebpf` (the verifier checks it on its own) and puts it in the program array the
/// XDP program tail-calls through; returns it, for pinning.
///
/// # Errors
/// The object lacks the program or the array (an object older than this daemon), or the kernel refused the program
/// or the array update.
pub(crate) fn install(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(PROG_XDP_HELLO)
        .with_context(|| {
            format!("the BPF object has no program `{PROG_XDP_HELLO}`; rebuild it with `cargo xtask build`")
        })?
        .try_into()
        .with_context(|| {
            format!("program `{PROG_XDP_HELLO}` is not an XDP program; rebuild it with `cargo xtask build`")
        })?;
    program
        .load()
        .map_err(anyhow::Error::new)
        .map_err(|e| refusal::explain(&format!("XDP program `{PROG_XDP_HELLO}`"), e))
        .with_context(|| format!("the kernel refused to load XDP program `{PROG_XDP_HELLO}`"))?;
    let fd = program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .with_context(|| format!("no descriptor for XDP program `{PROG_XDP_HELLO}`"))?;
    let mut array: ProgramArray<_> = ebpf
        .map_mut(MAP_XDP_HELLO_PROG)
        .with_context(|| {
            format!("the BPF object has no map `{MAP_XDP_HELLO_PROG}`; rebuild it with `cargo xtask build`")
        })?
        .try_into()
        .with_context(|| {
            format!("map `{MAP_XDP_HELLO_PROG}` is not a program array; rebuild it with `cargo xtask build`")
        })?;
    array.set(0, &fd, 0).with_context(|| {
        format!("cannot put `{PROG_XDP_HELLO}` in program array `{MAP_XDP_HELLO_PROG}`")
    })?;
    ebpf.program_mut(PROG_XDP_HELLO)
        .and_then(|program| program.try_into().ok())
        .with_context(|| format!("program `{PROG_XDP_HELLO}` vanished from the object"))
}

/// `BPF_MAP_LOOKUP_ELEM`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The id of the program in the pinned program array `dir/xdp_hello_prog` ([`MAP_XDP_HELLO_PROG`]), `None` when
/// its slot is empty (first payload segments then pass unjudged), for `portcullis xdp status`.
///
/// # Errors
/// The pin cannot be opened (no daemon running, not root) or read.
pub(crate) fn installed(dir: &std::path::Path) -> anyhow::Result<Option<u32>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let path = dir.join(MAP_XDP_HELLO_PROG);
    let map = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("cannot open the pinned program array {}", path.display()))?;
    let key = 0u32;
    let mut id = 0u32;
    // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd @0, key @8, value @16, flags @24.
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map.fd().as_fd().as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(std::ptr::from_ref(&key) as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(std::ptr::from_mut(&mut id) as u64).to_ne_bytes());
    // SAFETY: `attr` is a bpf_attr for BPF_MAP_LOOKUP_ELEM whose pointers (`key`, `id`: the 4-byte key and value of
    // a program array, whose lookups from userspace return the program's id) outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if rc == 0 {
        return Ok(Some(id));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        return Ok(None);
    }
    Err(error).with_context(|| format!("cannot read the pinned program array {}", path.display()))
}

//! The ClientHello parse inside XDP: the ABI crate's parser, run stage by stage in a program of its own,
//! [`portcullis_ch`], which the XDP program tail-calls (through [`XDP_HELLO_PROG`]) after [`start`] described the
//! payload in this CPU's scratch. The program finishes the packet itself: verdict, counters, drop log, action.
//!
//! Why a program of its own, entered by a jump: the verifier then checks the parse once, from its own entry, and a
//! tail call costs no return through the kernel's return thunk (a call's did: `BENCHMARKS.md`).
//!
//! Why every step first passes the slot's pointer through `barrier::forget`: LLVM then reloads the parse state from
//! the map value, whose contents the verifier does not track, so every way one step ends reaches the next in one
//! verifier state and the parse is walked once (verifier counts in `docs/xdp-guard.md`). That is also why the state
//! lives in a map value and not on the stack. Each step reads the payload in place, from `data`/`data_end`.

use aya_ebpf::{
    bindings::xdp_md,
    btf_maps::{PerCpuArray, ProgramArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_abi::{
    client_hello::{
        HelloBytes, Workspace,
        steps::{self, Step, Steps},
    },
    verdict::Verdict,
};

use crate::barrier::{forget, opaque};
use crate::config::config;
use crate::finish::finish;
use crate::judge;

/// Most payload bytes judged, a power of two: reads mask their offset with `PAYLOAD - 1` for the verifier. A first
/// segment at Ethernet MTU holds at most 1,460; the program is not frags-aware, so the kernel hands it linear
/// frames of at most a page. A longer payload is not judged (fail open).
const PAYLOAD: usize = 4096;

/// One parse's state: where the payload lies, what the verdict after it needs, and the parser's workspace.
#[repr(C)]
struct Scratch {
    /// Offset of the TCP payload from the start of the frame, at most [`MAX_BASE`].
    base: u32,
    /// Payload bytes judged: the IP length's, cut to what the frame holds; at most [`PAYLOAD`].
    len: u32,
    /// The way of the source's bucket in the ClientHello budget table (`limits::way_index`), or [`NO_BUCKET`].
    bucket: u32,
    /// The TCP destination port, for the drop log.
    dst_port: u32,
    /// The parse's final status, passed through memory (see [`portcullis_ch`]).
    status: i32,
    /// The parser's state between steps.
    workspace: Workspace,
}

/// Most header bytes before the TCP payload the parse reads past (Ethernet + 802.1Q 18, IPv6 with extension
/// headers or IPv4 with options, TCP with options 60): larger offsets are not judged (fail open). A mask for the
/// verifier, which must bound the packet offset of every read.
const MAX_BASE: u32 = 511;

/// [`Scratch::bucket`] when there is no ClientHello budget.
const NO_BUCKET: u32 = u32::MAX;

/// 64-bit words of a [`Scratch`]: the map value is declared as plain words so its BTF is an array of `u64`,
/// not the parser's Rust types (enums with data have no BTF the kernel accepts).
const SCRATCH_WORDS: usize = size_of::<Scratch>().div_ceil(8);

const _: () = assert!(align_of::<Scratch>() <= 8);

/// Per-CPU parse state (see the module docs); not read by userspace. Named like
/// `portcullis_abi::names::MAP_XDP_HELLO_WS`.
#[btf_map(name = "xdp_hello_ws")]
static XDP_HELLO_WS: PerCpuArray<[u64; SCRATCH_WORDS], 1> = PerCpuArray::new();

/// This CPU's parse state, if the map lookup succeeds (it cannot fail for index 0 of a per-CPU array).
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    let words = XDP_HELLO_WS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, valid for the program run, 8-byte aligned and large enough (SCRATCH_WORDS);
    // the parse never runs concurrently with itself on one CPU. The bytes form a valid `Scratch` once `head`
    // has reset the workspace (keeping only the fingerprint choice `start` wrote before it), and no stage
    // reads it before that.
    Some(unsafe { &mut *words.cast::<Scratch>() })
}

/// The TCP payload of the packet being judged, read in place.
///
/// A read checks its end against the payload's length (the parser's "did these bytes arrive"; as the length is
/// at most [`PAYLOAD`], masking the offset with `PAYLOAD - 1` then changes nothing, but bounds it for the
/// verifier whatever path led there), then against `data_end` (what the verifier needs before a load). The
/// frame may hold more than the payload (Ethernet padding of a short frame, a trailer): the length check keeps
/// those bytes out. Cutting the frame instead (`bpf_xdp_adjust_tail`) would leave a driver's CHECKSUM_COMPLETE
/// sum covering bytes no longer there.
struct Payload {
    /// Address of the payload's first byte: `data + base`.
    start: usize,
    /// The frame's end (`data_end`).
    end: usize,
    /// Bytes in the payload (`Scratch::len`).
    len: u32,
}

impl HelloBytes for Payload {
    #[inline(always)]
    fn arrived(&self) -> usize {
        self.len as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Offsets come from the parser's readers, below 2^17: no overflow.
        if offset + N > self.len as usize {
            return None;
        }
        let at = self.start + (offset & (PAYLOAD - 1));
        if opaque(at + N) > self.end {
            return None;
        }
        // SAFETY: `at..at + N` lies inside the frame (`data..data_end`).
        Some(unsafe { load::<N>(at) })
    }
}

/// The `N` bytes at `at`: 2, 4 and 8 as one load each (LLVM loads an unaligned `[u8; N]` byte by byte, as BPF
/// targets may not allow unaligned loads; the kernel allows them from packets where the CPU does, as on x86).
///
/// # Safety
/// `at..at + N` must lie inside the frame, checked against `data_end` so that the verifier knows it.
#[inline(always)]
unsafe fn load<const N: usize>(at: usize) -> [u8; N] {
    #[cfg(target_arch = "bpf")]
    if N == 2 || N == 4 || N == 8 {
        let word: u64;
        // SAFETY: the caller's promise; a load into a register (zero-extended), no stack or flags touched.
        unsafe {
            if N == 2 {
                core::arch::asm!("{0} = *(u16 *)({1} + 0)", out(reg) word, in(reg) at,
                    options(pure, readonly, nostack, preserves_flags));
            } else if N == 4 {
                core::arch::asm!("{0} = *(u32 *)({1} + 0)", out(reg) word, in(reg) at,
                    options(pure, readonly, nostack, preserves_flags));
            } else {
                core::arch::asm!("{0} = *(u64 *)({1} + 0)", out(reg) word, in(reg) at,
                    options(pure, readonly, nostack, preserves_flags));
            }
        }
        // SAFETY: `N <= 8`: the first `N` of the word's little-endian bytes, the ones loaded, in memory order.
        return unsafe { core::mem::transmute_copy(&word.to_le_bytes()) };
    }
    // SAFETY: the caller's promise; `[u8; N]` has alignment 1.
    unsafe { core::ptr::read_unaligned(at as *const [u8; N]) }
}

/// Runs one step on `scratch`; see the module docs for why it goes through [`forget`] first.
#[inline(always)]
fn run(ctx: *mut xdp_md, scratch: *mut Scratch, step: Step) -> i32 {
    // SAFETY: this CPU's slot (see `scratch`), valid for the run.
    let scratch = unsafe { &mut *forget(scratch) };
    // SAFETY: `ctx` is the XDP context the kernel passed to the program, valid for the run.
    let (data, end) = unsafe { ((*ctx).data as usize, (*ctx).data_end as usize) };
    let payload = Payload {
        start: data + (scratch.base & MAX_BASE) as usize,
        end,
        len: scratch.len,
    };
    steps::run(step, &payload, &mut scratch.workspace)
}

/// The steps run in place, one after another, each forgetting what the one before left in registers.
struct InPlace {
    ctx: *mut xdp_md,
    scratch: *mut Scratch,
}

impl Steps for InPlace {
    #[inline(always)]
    fn run(&mut self, step: Step) -> i32 {
        run(self.ctx, self.scratch, step)
    }

    /// Only when a blocked fingerprint has the ClientHello's shape: any other fingerprint is known to pass.
    #[inline(always)]
    fn hash_wanted(&mut self) -> bool {
        // SAFETY: this CPU's slot (see `scratch`), valid for the run.
        let scratch = unsafe { &*forget(self.scratch) };
        judge::shape_blocked(scratch.workspace.shape())
    }
}

/// The program [`judge_by_tail_call`] jumps to; the name must match `portcullis_abi::names::MAP_XDP_HELLO_PROG`.
/// Filled by the daemon (index 0: [`portcullis_ch`]); empty, the first segment passes unjudged.
#[btf_map(name = "xdp_hello_prog")]
static XDP_HELLO_PROG: ProgramArray<1> = ProgramArray::new();

/// Tail-calls [`portcullis_ch`] on the segment [`start`] described; returns only if the call fails (the
/// program array is empty).
#[inline(always)]
pub fn judge_by_tail_call(ctx: &XdpContext) {
    // SAFETY: a tail call to an XDP program on the same context; nothing here needs dropping.
    unsafe { XDP_HELLO_PROG.tail_call(ctx, 0) };
}

/// The ClientHello program: parses the TCP payload [`start`] described in this CPU's scratch, decides the packet's
/// verdict ([`crate::judge::after_parse`]) and finishes it as the main program would have ([`crate::finish::finish`]). Its
/// name must match `portcullis_abi::names::PROG_XDP_HELLO`.
///
/// A program of its own, entered by a tail call, rather than a function the main program calls: a tail call is a
/// jump, and the return from a call goes through the kernel's return thunk (`spec_rstack_overflow: Safe RET`):
/// after the parse it was the hottest spot of a ClientHello's profile, ≈ 6% of its samples (`BENCHMARKS.md`). The
/// verifier checks it from its own entry, once, as it did the global function the parse was before.
#[xdp]
pub fn portcullis_ch(ctx: XdpContext) -> u32 {
    let config = config();
    let Some(slot) = scratch() else {
        return finish(&ctx, config, Verdict::PassListenerTcp, 0, false);
    };
    let slot: *mut Scratch = slot;
    let status = steps::drive(&mut InPlace {
        ctx: ctx.ctx,
        scratch: slot,
    });
    // The status through the slot and back behind the barrier: each way the parse ends has a status of its own
    // (a reason per record after the first, for one), and from each the verifier would walk the verdict and the
    // finish again; read back from the map value, all reach them in one state.
    // SAFETY: this CPU's slot (see `scratch`), valid for the run; the steps are done with it.
    unsafe { (*slot).status = status };
    // The same slot, through the barrier so that the summary and the status are read from it (a second lookup cost
    // 2% of a ClientHello, paired).
    // SAFETY: as above.
    let slot = unsafe { &*forget(slot) };
    let status = slot.status;
    let summary = slot.workspace.summary();
    let judged = judge::Judged {
        status,
        resumption: summary.offers_psk || summary.tls12_ticket,
        fingerprints: match summary.fingerprint {
            Some(f) if status == steps::DONE => Some([f.ordered, f.unordered]),
            _ => None,
        },
        shape: slot.workspace.shape(),
    };
    let bucket = (slot.bucket != NO_BUCKET).then_some(slot.bucket);
    let dst_port = slot.dst_port as u16;
    let verdict = judge::after_parse(&judged, bucket, config);
    crate::known::after_verdict(&ctx, config, verdict);
    finish(&ctx, config, verdict, dst_port, false)
}

/// Describes the TCP payload at `offset` (declared `len` bytes) of the packet in this CPU's scratch for
/// [`portcullis_ch`], with whether to compute the fingerprints (they are most of the hashing), the source's
/// ClientHello budget way and the destination port. `false` when the payload is not judged (fail open): it lies
/// past [`MAX_BASE`], or is longer than [`PAYLOAD`].
#[inline(always)]
pub fn start(
    ctx: *mut xdp_md,
    offset: u16,
    len: u16,
    fingerprint: bool,
    bucket: Option<u32>,
    dst_port: u16,
) -> bool {
    let Some(slot) = scratch() else {
        return false;
    };
    if u32::from(offset) > MAX_BASE {
        return false;
    }
    // The program is not frags-aware (`#[xdp]`, not `#[xdp(frags)]`): the kernel hands it linear frames only, so
    // the frame's length is `data_end - data`. A frags-aware program must read past the linear part.
    // SAFETY: `ctx` is the XDP context the kernel passed to the program, valid for the run.
    let frame = unsafe { (*ctx).data_end.wrapping_sub((*ctx).data) };
    let Some(present) = frame.checked_sub(u32::from(offset)) else {
        return false;
    };
    let len = u32::from(len);
    let judged = if present < len { present } else { len };
    if judged as usize > PAYLOAD {
        return false;
    }
    slot.workspace.want_fingerprint(fingerprint);
    slot.base = u32::from(offset);
    slot.len = judged;
    slot.bucket = bucket.unwrap_or(NO_BUCKET);
    slot.dst_port = u32::from(dst_port);
    true
}

//! The ClientHello parse inside XDP: the ABI crate's parser, run stage by stage.
//!
//! The parser's [`stages`] each become one *global* BPF function (`#[unsafe(no_mangle)] extern "C"`, so the
//! object's BTF gives it global linkage). The verifier checks a global function once, on its own, from
//! arguments it knows only by type, and a call to it costs the caller one instruction of verification. The
//! whole ClientHello walk inlined into the program exceeded the one-million-instruction budget on 6.18: every
//! path out of the cipher-suite and extension loops was walked again through everything after them. Split, each
//! stage is verified once.
//!
//! A global function may take only the context and scalars, so the parse state lives in this CPU's slot of
//! [`XDP_HELLO_WS`] (a [`Workspace`] plus where the payload lies), looked up again by each stage. XDP programs
//! are not preempted on a CPU, so no other parse touches the slot in between.

use aya_ebpf::{
    bindings::xdp_md, btf_maps::PerCpuArray, helpers::generated::bpf_xdp_load_bytes,
    macros::btf_map,
};
use portcullis_abi::client_hello::{
    HelloBytes, Workspace,
    stages::{self, Stages, Step},
};

/// Payload bytes copied out of the packet for the parse: a first segment at Ethernet MTU is at most 1,460; a
/// longer one (jumbo frames) is judged on its first `COPY` bytes, as a ClientHello cut short (fail open).
const COPY: usize = 2048;

/// One parse's state: the payload bytes and the parser's workspace.
#[repr(C)]
struct Scratch {
    /// Offset of the TCP payload from the start of the frame.
    base: u32,
    /// Payload bytes copied into `bytes` (declared by IP, cut to what the packet holds and to [`COPY`]).
    len: u32,
    /// The payload, copied once by [`judge`] with one `bpf_xdp_load_bytes` (frames are linear: the program is
    /// not frags-aware); reads index it masked by `COPY - 1`, the slack covers the widest read past that.
    bytes: [u8; COPY + 8],
    /// The parser's state between stages.
    workspace: Workspace,
}

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
    // has reset the workspace (keeping only the fingerprint choice `judge` wrote before it), and no stage
    // reads it before that.
    Some(unsafe { &mut *words.cast::<Scratch>() })
}

/// The TCP payload of the packet being judged, as copied into the scratch.
///
/// A read is a masked index into the map value: the mask bounds the offset for the verifier whatever path led
/// there, and costs one instruction, where a `bpf_xdp_load_bytes` call per field cost a helper call each.
struct Payload {
    bytes: *const u8,
    len: u32,
}

impl HelloBytes for Payload {
    #[inline(always)]
    fn arrived(&self) -> usize {
        self.len as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let len = self.len as usize;
        if N > len || offset > len - N {
            return None;
        }
        // `offset < len <= COPY` already; the mask says so to the verifier.
        let offset = offset & (COPY - 1);
        // SAFETY: `bytes` points at `COPY + 8` bytes of this CPU's scratch and `offset + N <= COPY + 8` (N is at
        // most 3); `[u8; N]` has alignment 1.
        Some(unsafe { core::ptr::read_unaligned(self.bytes.add(offset).cast::<[u8; N]>()) })
    }
}

/// Runs one step on this CPU's scratch; a missing scratch reads as truncation (pass: fail open).
#[inline(always)]
fn run(ctx: *mut xdp_md, step: Step) -> i32 {
    let Some(scratch) = scratch() else {
        return stages::TRUNCATED;
    };
    // Every step must use `ctx`: no step reads the packet any more (the payload was copied by `judge`), and
    // LLVM, seeing the whole object, would leave the argument register unset at the call, which the verifier
    // rejects ("Caller passes invalid args"). A volatile read of one context field is the cheapest use.
    // SAFETY: `ctx` is the XDP context the kernel passed to the program, valid for the run.
    let _ = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data_end)) };
    let payload = Payload {
        bytes: scratch.bytes.as_ptr(),
        len: scratch.len,
    };
    stages::run(step, &payload, &mut scratch.workspace)
}

/// Defines one global BPF function per parse step.
macro_rules! global_steps {
    ($($name:ident => $step:ident),* $(,)?) => {
        $(
            #[doc = concat!("[`Step::", stringify!($step), "`] of the parse, a global BPF function.")]
            #[unsafe(no_mangle)]
            #[inline(never)]
            pub extern "C" fn $name(ctx: *mut xdp_md) -> i32 {
                run(ctx, Step::$step)
            }
        )*

        /// The steps as calls to the global functions.
        struct Global(*mut xdp_md);

        impl Stages for Global {
            #[inline(always)]
            fn run(&mut self, step: Step) -> i32 {
                match step {
                    $(Step::$step => $name(self.0),)*
                }
            }
        }
    };
}

global_steps! {
    portcullis_hello_head => Head,
    portcullis_hello_suites => Suites,
    portcullis_hello_ext => Extension,
    portcullis_hello_list1 => FirstList,
    portcullis_hello_list2 => SecondList,
    portcullis_hello_groups => Groups,
}

/// What the XDP program needs from one parse.
#[derive(Clone, Copy)]
pub struct Judged {
    /// The final [`stages`] status: [`stages::DONE`], [`stages::TRUNCATED`] or a malformation.
    pub status: i32,
    /// A TLS 1.3 PSK or TLS 1.2 ticket offer was seen (a resumption: cheap to serve).
    pub resumption: bool,
    /// Both fingerprints, when the whole ClientHello was present and they were asked for.
    pub fingerprints: Option<[u64; 2]>,
}

/// Parses the TCP payload at `offset` (declared `len` bytes) of the packet as a ClientHello, with its
/// fingerprints when `fingerprint` (they are most of the hashing).
#[inline(always)]
pub fn judge(ctx: *mut xdp_md, offset: u16, len: u16, fingerprint: bool) -> Judged {
    let not_judged = Judged {
        status: stages::TRUNCATED,
        resumption: false,
        fingerprints: None,
    };
    let Some(slot) = scratch() else {
        return not_judged;
    };
    slot.base = u32::from(offset);
    slot.len = 0;
    slot.workspace.want_fingerprint(fingerprint);
    // The program is not frags-aware (`#[xdp]`, not `#[xdp(frags)]`): the kernel hands it linear frames only, so
    // the frame's length is `data_end - data`, read from the context where a `bpf_xdp_get_buff_len` call cost
    // 10-20 ns more (BENCHMARKS.md). A frags-aware program must go back to the helper.
    // SAFETY: `ctx` is the XDP context the kernel passed to the program, valid for the run.
    let buffer = unsafe { u64::from((*ctx).data_end.wrapping_sub((*ctx).data)) };
    let present = buffer.saturating_sub(u64::from(offset));
    let mut copy = u64::from(len);
    if copy > present {
        copy = present;
    }
    if copy > COPY as u64 {
        copy = COPY as u64;
    }
    // The verifier wants the size provably in 1..=COPY on the register handed to the helper. Checked with
    // `if`, LLVM folds the checks into a comparison on another register; masked like this, it cannot (it does
    // not know `copy >= 1`). `copy == 0` (nothing present) becomes COPY, which the helper refuses: nothing
    // copied, `len` stays 0.
    let size = (copy.wrapping_sub(1) & (COPY as u64 - 1)) + 1;
    // SAFETY: `bytes` has room for COPY >= size bytes; the helper checks the packet range and fails cleanly.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx,
            u32::from(offset),
            slot.bytes.as_mut_ptr().cast(),
            size as u32,
        )
    };
    if rc == 0 {
        slot.len = size as u32;
    }
    let status = stages::drive(&mut Global(ctx));
    // Looked up again: the verifier forgets map value pointers' contents across the calls anyway.
    let Some(slot) = scratch() else {
        return not_judged;
    };
    let summary = slot.workspace.summary();
    Judged {
        status,
        resumption: summary.offers_psk || summary.tls12_ticket,
        fingerprints: match summary.fingerprint {
            Some(f) if status == stages::DONE => Some([f.ordered, f.unordered]),
            _ => None,
        },
    }
}

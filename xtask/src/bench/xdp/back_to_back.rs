//! A flood back to back: every repeat of one `BPF_PROG_TEST_RUN` a SYN from a new source, as a spoofed flood
//! arrives at line rate (one packet after another on a core, no system call between them).
//!
//! The rows that run one frame per `BPF_PROG_TEST_RUN` (a new source or flow each) pay, besides the program, for
//! whatever the system call in between evicted (its own path, and on a shared host other processes): their
//! figures are the guard with cold caches. Here a small driver program, assembled below, rewrites the frame before
//! each repeat (source address 10.x.y.z, source port and sequence number from a counter in its own map) and tail-calls the guard; the harness is the same driver tail-calling the empty program. So
//! the figure is the guard's cost per SYN of a flood of new sources with the guard's code and fixed state warm, as
//! at line rate, and its tables as cold as their size makes them.

use std::os::fd::RawFd;

use anyhow::{Context as _, Result};

use super::{BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD, BPF_PROG_TYPE_XDP, bpf};

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_long = 0;
/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_XDP`, the attach type.
pub(super) const BPF_XDP_ATTACH: u32 = 37;
/// `BPF_MAP_TYPE_PROG_ARRAY`.
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;

/// The driver program and its maps, tail-calling one target program; closed on drop.
pub(super) struct Driver {
    /// The driver program, run by `BPF_PROG_TEST_RUN`.
    pub(super) fd: RawFd,
    counter: RawFd,
    targets: RawFd,
}

impl Driver {
    /// A driver that tail-calls the XDP program `target`.
    pub(super) fn load(target: RawFd) -> Result<Self> {
        let counter = map_create(BPF_MAP_TYPE_ARRAY, 8).context("the driver's counter map")?;
        let targets =
            map_create(BPF_MAP_TYPE_PROG_ARRAY, 4).context("the driver's program array")?;
        let key = 0u32;
        let value = target as u32;
        map_update(targets, &key.to_ne_bytes(), &value.to_ne_bytes())
            .context("installing the tail call's target")?;
        let insns = program(counter, targets);
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
        attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        // expected_attach_type BPF_XDP, as aya loads the guard: a program array takes only programs alike.
        attr[68..72].copy_from_slice(&BPF_XDP_ATTACH.to_ne_bytes());
        let mut log = vec![0u8; 64 * 1024];
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
        attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        // SAFETY: `attr` is a bpf_attr for BPF_PROG_LOAD whose pointers (`insns`, `license`, `log`) outlive the
        // call.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }.with_context(|| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            format!(
                "BPF_PROG_LOAD of the flood driver; verifier log:\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        })? as RawFd;
        Ok(Self {
            fd,
            counter,
            targets,
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for fd in [self.fd, self.targets, self.counter] {
            // SAFETY: our own descriptors, closed once.
            unsafe { libc::close(fd) };
        }
    }
}

/// One BPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `ld_imm64 dst, map fd` (`BPF_PSEUDO_MAP_FD`): two instruction slots.
fn load_map(dst: u8, fd: RawFd) -> [u64; 2] {
    [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// The driver: counter += 1; frame (an IPv4 SYN without VLAN tag, as the bench builds it) gets source
/// 10.c2.c1.c0, source port c and sequence number c from the counter c; tail call into `targets[0]`; `XDP_PASS`
/// if that fails.
fn program(counter: RawFd, targets: RawFd) -> Vec<u64> {
    // Opcodes (include/uapi/linux/bpf.h): ALU64 MOV X 0xbf, MOV K 0xb7, ADD K 0x07, RSH K 0x77; LDX W 0x61,
    // LDX DW 0x79; STX DW 0x7b, W 0x63, H 0x6b, B 0x73; ST W 0x62; JEQ K 0x15, JGT X 0x2d; CALL 0x85; EXIT 0x95.
    let mut p = vec![
        insn(0xbf, 6, 1, 0, 0),   // r6 = ctx
        insn(0x62, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
        insn(0xbf, 2, 10, 0, 0),  // r2 = r10
        insn(0x07, 2, 0, 0, -4),  // r2 -= 4
    ];
    p.extend(load_map(1, counter));
    p.extend([
        insn(0x85, 0, 0, 0, 1),  // r0 = bpf_map_lookup_elem(counter, &0)
        insn(0x15, 0, 0, 19, 0), // if r0 == 0 goto pass
        insn(0x79, 7, 0, 0, 0),  // r7 = *r0
        insn(0x07, 7, 0, 0, 1),  // r7 += 1
        insn(0x7b, 0, 7, 0, 0),  // *r0 = r7
        insn(0x61, 2, 6, 0, 0),  // r2 = ctx->data
        insn(0x61, 3, 6, 4, 0),  // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),  // r4 = r2
        insn(0x07, 4, 0, 0, 42), // r4 += 42 (Ethernet 14, IPv4 20, TCP up to the sequence number 8)
        insn(0x2d, 4, 3, 11, 0), // if r4 > r3 goto pass
        insn(0x6b, 2, 7, 28, 0), // source address bytes 2..4 = c's low half (byte order aside, a new source)
        insn(0xbf, 8, 7, 0, 0),  // r8 = r7
        insn(0x77, 8, 0, 0, 16), // r8 >>= 16
        insn(0x73, 2, 8, 27, 0), // source address byte 1 = c2
        insn(0x6b, 2, 7, 34, 0), // source port = c
        insn(0x63, 2, 7, 38, 0), // sequence number = c
        insn(0xbf, 1, 6, 0, 0),  // r1 = ctx
        insn(0xb7, 3, 0, 0, 0),  // r3 = 0
    ]);
    p.extend(load_map(2, targets));
    p.extend([
        insn(0x85, 0, 0, 0, 12), // bpf_tail_call(ctx, targets, 0)
        insn(0xb7, 0, 0, 0, 2),  // pass: r0 = XDP_PASS
        insn(0x95, 0, 0, 0, 0),  // exit
    ]);
    p
}

/// A map of one entry, 4-byte key, `value_size`-byte value.
fn map_create(map_type: u32, value_size: u32) -> Result<RawFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&map_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&value_size.to_ne_bytes());
    attr[12..16].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: `attr` is a bpf_attr for BPF_MAP_CREATE, no pointers.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.context("BPF_MAP_CREATE")?;
    Ok(fd as RawFd)
}

/// `map[key] = value`.
fn map_update(map: RawFd, key: &[u8], value: &[u8]) -> Result<()> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(map as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a bpf_attr for BPF_MAP_UPDATE_ELEM whose pointers (`key`, `value`) outlive the call.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.context("BPF_MAP_UPDATE_ELEM")?;
    Ok(())
}

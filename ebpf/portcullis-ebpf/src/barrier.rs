//! Compiler barriers for the verifier: register moves LLVM cannot see through, so it neither rewrites a bounds
//! check into a form the verifier learns nothing from ([`opaque`]) nor carries a map value's contents over in
//! registers where the verifier would walk every way they were computed ([`forget`]).

/// `x`, through a register move LLVM cannot see into. The ClientHello reads pass `at + N` through it before comparing
/// with `data_end` (LLVM's `at + 1 > end` becomes `at >= end`, from which the verifier learns no readable range);
/// the drop sampler passes its context pointer through it too. (An empty `asm!` gives two line-info records
/// one instruction, which the kernel refuses.)
#[inline(always)]
pub(crate) fn opaque(mut x: usize) -> usize {
    // SAFETY: one register move of `x` to itself; no memory, stack or flags touched.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

/// `scratch` (a pointer into a map value), through a register move that LLVM must assume reads and writes memory: what it knew of the
/// scratch's contents is forgotten and reloaded.
#[inline(always)]
pub(crate) fn forget<T>(mut scratch: *mut T) -> *mut T {
    // SAFETY: one register move of the pointer to itself; no stack or flags touched. Without `nomem`, LLVM
    // assumes the move may read and write any memory the pointer reaches.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) scratch, options(nostack, preserves_flags));
    }
    scratch
}

//! A bounds-checked cursor over the bytes a client sent.
//!
//! Every read knows two ends: the *declared* end of the field being read (taken from a length
//! prefix already parsed) and the end of the bytes that actually arrived. Crossing the declared end
//! is the sender's fault and yields the reader's `overrun` reason; running out of input is merely
//! [`Halt::Truncated`]. Keeping the two apart is what makes "truncation is never malformed" hold.
//!
//! Positions are offsets from the start of the caller's input, so a range found here (the SNI
//! host name) can be handed to userspace as is. Nothing here indexes or panics: every access goes
//! through `get()` and checked arithmetic, which is also what the BPF verifier wants to see.

use super::Malformed;

/// Where the parser reads the client's bytes from: a slice on the host, the TCP payload copied into
/// a per-CPU map value in the XDP program (read by an index masked to the buffer, so that the
/// verifier bounds it without tracking how it was computed).
///
/// Offsets are from the start of the client's first bytes.
pub trait HelloBytes {
    /// How many bytes arrived.
    fn arrived(&self) -> usize;
    /// The `N` bytes at `offset`, or `None` when they did not all arrive.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl HelloBytes for [u8] {
    #[inline(always)]
    fn arrived(&self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// The first `len` bytes of another input (the parser reads the fields of the first record only).
pub(super) struct Prefix<'a, I: HelloBytes + ?Sized> {
    /// The whole input.
    pub(super) inner: &'a I,
    /// Bytes kept.
    pub(super) len: usize,
}

impl<I: HelloBytes + ?Sized> HelloBytes for Prefix<'_, I> {
    #[inline(always)]
    fn arrived(&self) -> usize {
        let arrived = self.inner.arrived();
        if arrived < self.len {
            arrived
        } else {
            self.len
        }
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Offsets come from a `Reader`, inside a declared end of at most 2^16 + a few bytes: no overflow.
        if offset + N > self.len {
            return None;
        }
        self.inner.read::<N>(offset)
    }
}

/// Why parsing stopped before the end of the ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Halt {
    /// The input ended first. Not an error: the summary so far is the answer.
    Truncated,
    /// The bytes present prove the ClientHello malformed.
    Malformed(Malformed),
}

impl From<Malformed> for Halt {
    fn from(reason: Malformed) -> Self {
        Self::Malformed(reason)
    }
}

/// A cursor over one length-delimited field of an input passed to each read.
///
/// It holds no reference to the input: copies of a struct holding one made LLVM split the pointer into
/// 32-bit halves, which the BPF verifier rejects ("pointer arithmetic with >>= operator prohibited").
#[derive(Clone, Copy, Debug)]
pub(super) struct Reader {
    /// Offset of the next byte to read, from the start of `input`.
    pos: usize,
    /// Declared end of this field, from the start of `input`; may lie beyond `input.len()`.
    end: usize,
    /// What crossing `end` means for this field.
    overrun: Malformed,
}

impl Reader {
    /// A reader over `input[pos..end]`, where `end` may lie beyond the input.
    pub(super) const fn new(pos: usize, end: usize, overrun: Malformed) -> Self {
        Self { pos, end, overrun }
    }

    /// Offset of the next byte, from the start of the input.
    pub(super) const fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left before the declared end, whether or not they arrived.
    pub(super) const fn left(&self) -> usize {
        // `pos <= end` always: `new` is given ordered bounds and every move stops at `end`.
        self.end.wrapping_sub(self.pos)
    }

    /// Whether the declared end is reached.
    pub(super) const fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Steps over `n` bytes, which must lie inside the field and must have arrived.
    pub(super) fn skip<I: HelloBytes + ?Sized>(&mut self, input: &I, n: usize) -> Result<(), Halt> {
        let stop = self.checked_stop(n)?;
        if stop > input.arrived() {
            return Err(Halt::Truncated);
        }
        self.pos = stop;
        Ok(())
    }

    /// Reads the next `N` bytes, which must lie inside the field and must have arrived.
    #[inline(always)]
    fn array<I: HelloBytes + ?Sized, const N: usize>(
        &mut self,
        input: &I,
    ) -> Result<[u8; N], Halt> {
        let stop = self.checked_stop(N)?;
        let bytes = input.read::<N>(self.pos).ok_or(Halt::Truncated)?;
        self.pos = stop;
        Ok(bytes)
    }

    /// Reads one byte.
    pub(super) fn u8<I: HelloBytes + ?Sized>(&mut self, input: &I) -> Result<u8, Halt> {
        let [byte] = self.array::<I, 1>(input)?;
        Ok(byte)
    }

    /// Reads a big-endian (network order) `u16`.
    pub(super) fn u16<I: HelloBytes + ?Sized>(&mut self, input: &I) -> Result<u16, Halt> {
        Ok(u16::from_be_bytes(self.array::<I, 2>(input)?))
    }

    /// Reads four big-endian `u16`s (list entries the fingerprint hashes) with one bounds check, as one
    /// big-endian `u64`, the first entry in its top 16 bits.
    pub(super) fn u16_quad<I: HelloBytes + ?Sized>(&mut self, input: &I) -> Result<u64, Halt> {
        Ok(u64::from_be_bytes(self.array::<I, 8>(input)?))
    }

    /// Reads two big-endian `u16`s (an extension's type and length) with one bounds check.
    pub(super) fn u16_pair<I: HelloBytes + ?Sized>(
        &mut self,
        input: &I,
    ) -> Result<(u16, u16), Halt> {
        let [a, b, c, d] = self.array::<I, 4>(input)?;
        Ok((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])))
    }

    /// Reads a big-endian 24-bit length, as handshake headers carry.
    pub(super) fn u24<I: HelloBytes + ?Sized>(&mut self, input: &I) -> Result<u32, Halt> {
        let [hi, mid, lo] = self.array::<I, 3>(input)?;
        Ok(u32::from_be_bytes([0, hi, mid, lo]))
    }

    /// Splits off the next `n` bytes as a field of their own, whose overrun means `overrun`.
    ///
    /// Only the declared end is checked: the sub-field may not have fully arrived, and its
    /// reader will report that as [`Halt::Truncated`] when it gets there. This lets a
    /// truncated key_share still report the groups whose headers did arrive.
    pub(super) fn split(&mut self, n: usize, overrun: Malformed) -> Result<Self, Halt> {
        let (start, end) = self.take(n)?;
        Ok(Self::new(start, end, overrun))
    }

    /// Steps over the next `n` bytes and returns their `(start, end)`, for a field of its own. Like
    /// [`Reader::split`], only the declared end is checked, and crossing it is this reader's overrun.
    #[inline(always)]
    pub(super) fn take(&mut self, n: usize) -> Result<(usize, usize), Halt> {
        let stop = self.checked_stop(n)?;
        let start = self.pos;
        self.pos = stop;
        Ok((start, stop))
    }

    /// `pos + n`, if that stays inside the declared end.
    ///
    /// Compares `n` with the bytes left instead of checking `pos + n` for overflow: an overflow
    /// check the BPF verifier can decide from known ranges makes it track `pos` exactly, and
    /// then every length seen so far becomes a separate verifier state.
    fn checked_stop(&self, n: usize) -> Result<usize, Halt> {
        if n > self.left() {
            return Err(Halt::Malformed(self.overrun));
        }
        Ok(self.pos + n)
    }
}

#[cfg(test)]
mod tests {
    use super::{Halt, Malformed, Reader};

    const REASON: Malformed = Malformed::ExtensionFramingBroken;

    #[test]
    fn reads_big_endian_and_advances() {
        let bytes = [1, 2, 3, 4, 5, 6];
        let mut r = Reader::new(0, bytes.len(), REASON);
        assert_eq!(r.u8(&bytes[..]), Ok(1));
        assert_eq!(r.u16(&bytes[..]), Ok(0x0203));
        assert_eq!(r.u24(&bytes[..]), Ok(0x04_0506));
        assert!(r.is_empty());
    }

    #[test]
    fn declared_end_beats_missing_input() {
        // The field declares 3 bytes, 2 arrived: a 4-byte read is the sender's fault even though
        // the input is also short, because the declared end alone proves it.
        let bytes = [1, 2];
        let mut r = Reader::new(0, 3, REASON);
        assert_eq!(r.skip(&bytes[..], 4), Err(Halt::Malformed(REASON)));
        assert_eq!(r.skip(&bytes[..], 3), Err(Halt::Truncated));
        assert_eq!(r.position(), 0, "a failed read must not move the cursor");
    }

    #[test]
    fn split_checks_only_the_declared_end() {
        let bytes = [0, 9];
        let mut r = Reader::new(0, 10, REASON);
        let mut inner = r
            .split(8, Malformed::BadKeyShare)
            .expect("8 bytes fit in 10");
        assert_eq!(r.position(), 8);
        assert_eq!(inner.left(), 8);
        assert_eq!(inner.u16(&bytes[..]), Ok(9));
        assert_eq!(inner.u16(&bytes[..]), Err(Halt::Truncated));
        assert_eq!(
            inner.skip(&bytes[..], 7),
            Err(Halt::Malformed(Malformed::BadKeyShare))
        );
        assert_eq!(r.split(3, REASON).map(|_| ()), Err(Halt::Malformed(REASON)));
        assert_eq!(
            r.split(usize::MAX, REASON).map(|_| ()),
            Err(Halt::Malformed(REASON))
        );
    }
}

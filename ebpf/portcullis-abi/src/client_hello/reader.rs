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

/// A cursor over one length-delimited field.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reader<'a> {
    /// The bytes that arrived (possibly fewer than the field declares).
    input: &'a [u8],
    /// Offset of the next byte to read, from the start of `input`.
    pos: usize,
    /// Declared end of this field, from the start of `input`; may lie beyond `input.len()`.
    end: usize,
    /// What crossing `end` means for this field.
    overrun: Malformed,
}

impl<'a> Reader<'a> {
    /// A reader over `input[pos..end]`, where `end` may lie beyond the input.
    pub(super) const fn new(input: &'a [u8], pos: usize, end: usize, overrun: Malformed) -> Self {
        Self {
            input,
            pos,
            end,
            overrun,
        }
    }

    /// Offset of the next byte, from the start of the input.
    pub(super) const fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left before the declared end, whether or not they arrived.
    pub(super) const fn left(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// Whether the declared end is reached.
    pub(super) const fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Steps over `n` bytes, which must lie inside the field and must have arrived.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Halt> {
        let stop = self.checked_stop(n)?;
        let bytes = self.input.get(self.pos..stop).ok_or(Halt::Truncated)?;
        self.pos = stop;
        Ok(bytes)
    }

    /// Like [`Reader::take`], discarding the bytes.
    pub(super) fn skip(&mut self, n: usize) -> Result<(), Halt> {
        self.take(n).map(|_| ())
    }

    /// Reads one byte.
    pub(super) fn u8(&mut self) -> Result<u8, Halt> {
        match self.take(1)? {
            [byte] => Ok(*byte),
            _ => Err(Halt::Truncated),
        }
    }

    /// Reads a big-endian (network order) `u16`.
    pub(super) fn u16(&mut self) -> Result<u16, Halt> {
        match self.take(2)? {
            [hi, lo] => Ok(u16::from_be_bytes([*hi, *lo])),
            _ => Err(Halt::Truncated),
        }
    }

    /// Reads a big-endian 24-bit length, as handshake headers carry.
    pub(super) fn u24(&mut self) -> Result<u32, Halt> {
        match self.take(3)? {
            [hi, mid, lo] => Ok(u32::from_be_bytes([0, *hi, *mid, *lo])),
            _ => Err(Halt::Truncated),
        }
    }

    /// Splits off the next `n` bytes as a field of their own, whose overrun means `overrun`.
    ///
    /// Only the declared end is checked: the sub-field may not have fully arrived, and its
    /// reader will report that as [`Halt::Truncated`] when it gets there. This lets a
    /// truncated key_share still report the groups whose headers did arrive.
    pub(super) fn split(&mut self, n: usize, overrun: Malformed) -> Result<Self, Halt> {
        let stop = self.checked_stop(n)?;
        let field = Self::new(self.input, self.pos, stop, overrun);
        self.pos = stop;
        Ok(field)
    }

    /// `pos + n`, if that stays inside the declared end.
    fn checked_stop(&self, n: usize) -> Result<usize, Halt> {
        match self.pos.checked_add(n) {
            Some(stop) if stop <= self.end => Ok(stop),
            _ => Err(Halt::Malformed(self.overrun)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Halt, Malformed, Reader};

    const REASON: Malformed = Malformed::ExtensionFramingBroken;

    #[test]
    fn reads_big_endian_and_advances() {
        let bytes = [1, 2, 3, 4, 5, 6];
        let mut r = Reader::new(&bytes, 0, bytes.len(), REASON);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u24(), Ok(0x04_0506));
        assert!(r.is_empty());
    }

    #[test]
    fn declared_end_beats_missing_input() {
        // The field declares 3 bytes, 2 arrived: a 4-byte read is the sender's fault even though
        // the input is also short, because the declared end alone proves it.
        let bytes = [1, 2];
        let mut r = Reader::new(&bytes, 0, 3, REASON);
        assert_eq!(r.take(4), Err(Halt::Malformed(REASON)));
        assert_eq!(r.take(3), Err(Halt::Truncated));
        assert_eq!(r.position(), 0, "a failed read must not move the cursor");
    }

    #[test]
    fn split_checks_only_the_declared_end() {
        let bytes = [0, 9];
        let mut r = Reader::new(&bytes, 0, 10, REASON);
        let mut inner = r
            .split(8, Malformed::BadKeyShare)
            .expect("8 bytes fit in 10");
        assert_eq!(r.position(), 8);
        assert_eq!(inner.left(), 8);
        assert_eq!(inner.u16(), Ok(9));
        assert_eq!(inner.u16(), Err(Halt::Truncated));
        assert_eq!(inner.skip(7), Err(Halt::Malformed(Malformed::BadKeyShare)));
        assert_eq!(r.split(3, REASON).map(|_| ()), Err(Halt::Malformed(REASON)));
        assert_eq!(
            r.split(usize::MAX, REASON).map(|_| ()),
            Err(Halt::Malformed(REASON))
        );
    }
}

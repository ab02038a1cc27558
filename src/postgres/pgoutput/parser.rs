//! The bounds-checked big-endian parser every decoding step goes through.

use bytes::Bytes;

use super::error::{Byte, DecodeError, Tag};

/// Bounds-checked big-endian parser over one message.
pub(super) struct Parser<'a> {
    pub(super) buf: &'a Bytes,
    pub(super) pos: usize,
    pub(super) tag: Tag,
}

impl Parser<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        match self.buf.get(self.pos..self.pos + N) {
            Some(bytes) => {
                let mut out = [0; N];
                out.copy_from_slice(bytes);
                self.pos += N;
                Ok(out)
            }
            None => Err(self.truncated(what, N)),
        }
    }

    fn truncated(&self, what: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            tag: self.tag,
            offset: self.pos,
            what,
            needed,
            remaining: self.remaining(),
        }
    }

    pub(super) fn unexpected(
        &self,
        offset: usize,
        expected: &'static str,
        found: u8,
    ) -> DecodeError {
        DecodeError::UnexpectedByte {
            tag: self.tag,
            offset,
            expected,
            found: Byte(found),
        }
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.truncated(what, 1)),
        }
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.take(what).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.take(what).map(u32::from_be_bytes)
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.take(what).map(i32::from_be_bytes)
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.take(what).map(u64::from_be_bytes)
    }

    pub(super) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.take(what).map(i64::from_be_bytes)
    }

    pub(super) fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        self.pos += n;
        Ok(())
    }

    pub(super) fn marker(&mut self, expected: u8, name: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8("tuple marker")? {
            b if b == expected => Ok(()),
            found => Err(self.unexpected(offset, name, found)),
        }
    }

    /// A non-negative Int32 length that fits in what is left.
    pub(super) fn check_length(
        &self,
        offset: usize,
        what: &'static str,
        len: i32,
    ) -> Result<usize, DecodeError> {
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(DecodeError::BadLength {
                tag: self.tag,
                offset,
                what,
                value: len.into(),
                remaining: self.remaining(),
            }),
        }
    }

    /// A count of items of at least `min_size` bytes each that fits in what is left.
    pub(super) fn check_count(
        &self,
        offset: usize,
        what: &'static str,
        count: usize,
        min_size: usize,
    ) -> Result<(), DecodeError> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(DecodeError::BadLength {
                tag: self.tag,
                offset,
                what,
                value: count as i64,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    /// A NUL-terminated UTF-8 string.
    fn str(&mut self, what: &'static str) -> Result<&str, DecodeError> {
        let offset = self.pos;
        let rest = &self.buf[offset..];
        let Some(nul) = memchr::memchr(0, rest) else {
            return Err(DecodeError::UnterminatedString {
                tag: self.tag,
                offset,
                what,
            });
        };
        self.pos += nul + 1;
        std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            offset,
            what,
        })
    }

    pub(super) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        self.str(what).map(str::to_owned)
    }
}

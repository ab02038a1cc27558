//! Why a payload could not be decoded, with the message tag and byte offset.

use std::fmt;

/// A message tag byte, shown with the message's name when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub u8);

impl Tag {
    /// The message name of a tag, for protocol version 1 and the unsupported
    /// later additions.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            b'B' => "Begin",
            b'C' => "Commit",
            b'O' => "Origin",
            b'R' => "Relation",
            b'Y' => "Type",
            b'I' => "Insert",
            b'U' => "Update",
            b'D' => "Delete",
            b'T' => "Truncate",
            b'M' => "Message",
            b'S' => "Stream Start",
            b'E' => "Stream Stop",
            b'c' => "Stream Commit",
            b'A' => "Stream Abort",
            b'b' => "Begin Prepare",
            b'P' => "Prepare",
            b'K' => "Commit Prepared",
            b'r' => "Rollback Prepared",
            b'p' => "Stream Prepare",
            _ => return None,
        })
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", Byte(self.0)),
            None => write!(f, "{}", Byte(self.0)),
        }
    }
}

/// A protocol byte, shown as `'x'` when printable, else as `0xNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Byte(pub u8);

impl fmt::Display for Byte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// A pgoutput payload that could not be decoded. Offsets count from the start
/// of the payload (the tag is byte 0).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message: no tag byte")]
    Empty,
    #[error(
        "pgoutput {tag} message truncated at byte {offset}: {what} needs {needed} bytes, {remaining} left"
    )]
    Truncated {
        tag: Tag,
        offset: usize,
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("pgoutput {tag} message: {what} at byte {offset} has no terminating NUL")]
    UnterminatedString {
        tag: Tag,
        offset: usize,
        what: &'static str,
    },
    #[error("pgoutput {tag} message: {what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        tag: Tag,
        offset: usize,
        what: &'static str,
    },
    #[error("unknown pgoutput message tag {tag} at byte 0")]
    UnknownTag { tag: Tag },
    #[error(
        "pgoutput {tag} message: bad tuple column kind {found} at byte {offset} (expected 'n', 'u', 't' or 'b')"
    )]
    BadColumnKind {
        tag: Tag,
        offset: usize,
        found: Byte,
    },
    #[error("pgoutput {tag} message: expected {expected} at byte {offset}, found {found}")]
    UnexpectedByte {
        tag: Tag,
        offset: usize,
        expected: &'static str,
        found: Byte,
    },
    #[error(
        "pgoutput {tag} message: {what} at byte {offset} is {value}, more than the {remaining} bytes left can hold"
    )]
    BadLength {
        tag: Tag,
        offset: usize,
        what: &'static str,
        value: i64,
        remaining: usize,
    },
    #[error(
        "pgoutput {tag} message at byte 0: {what} are not supported; start replication with proto_version '1' and without streaming or two_phase"
    )]
    Unsupported { tag: Tag, what: &'static str },
    #[error("pgoutput {tag} message: {remaining} unexpected trailing bytes at byte {offset}")]
    TrailingBytes {
        tag: Tag,
        offset: usize,
        remaining: usize,
    },
    #[error("pgoutput message of {len} bytes is larger than the 4 GiB a tuple offset can address")]
    TooLarge { len: usize },
}

impl DecodeError {
    /// The message tag, when the payload had one.
    pub fn tag(&self) -> Option<Tag> {
        match self {
            DecodeError::Empty | DecodeError::TooLarge { .. } => None,
            DecodeError::Truncated { tag, .. }
            | DecodeError::UnterminatedString { tag, .. }
            | DecodeError::InvalidUtf8 { tag, .. }
            | DecodeError::UnknownTag { tag }
            | DecodeError::BadColumnKind { tag, .. }
            | DecodeError::UnexpectedByte { tag, .. }
            | DecodeError::BadLength { tag, .. }
            | DecodeError::Unsupported { tag, .. }
            | DecodeError::TrailingBytes { tag, .. } => Some(*tag),
        }
    }

    /// Byte offset in the payload where decoding failed.
    pub fn offset(&self) -> usize {
        match self {
            DecodeError::Empty
            | DecodeError::TooLarge { .. }
            | DecodeError::UnknownTag { .. }
            | DecodeError::Unsupported { .. } => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::BadColumnKind { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::BadLength { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => *offset,
        }
    }
}

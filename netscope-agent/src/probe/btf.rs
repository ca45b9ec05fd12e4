//! Just enough of a BTF reader (the format of `/sys/kernel/btf/vmlinux`, Linux's
//! `include/uapi/linux/btf.h`) to find the byte offset of a named member of a named struct,
//! through anonymous structs and unions. aya keeps its own BTF parser's type walk private, and
//! the crates that expose one are LGPL; this is the part NetScope needs, and no more.
//!
//! Layout: a header (magic `0xEB9F`, version 1, header length, then offset and length of the
//! type and string sections, both relative to the header's end); the type section is a run of
//! `btf_type` records (`name_off`, `info` = kind in bits 24–28, `kind_flag` in bit 31, `vlen` in
//! bits 0–15, then `size` or `type`), each followed by data whose length its kind and `vlen`
//! give. Type ids count records from 1 (0 is `void`). A struct member is (`name_off`, `type`,
//! `offset`); with `kind_flag` set, `offset` carries the bitfield size in its top 8 bits and the
//! bit offset in its low 24. The blob is in the host's byte order.

use std::borrow::Cow;

const MAGIC: u16 = 0xEB9F;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// The highest kind this reader knows how to step over.
const KIND_MAX: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (magic {0:#06x}; a blob in the other byte order is not supported)")]
    Magic(u16),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("type {id} has kind {kind}, which this reader does not know")]
    UnknownKind { id: usize, kind: u32 },
}

/// One `btf_type` record: where its trailing data starts, and what its header says.
#[derive(Clone, Copy, Debug)]
struct TypeRecord {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Byte offset of the data that follows the record (members, for a struct).
    data: usize,
}

/// A parsed BTF blob: the bytes and an index of its types by id.
pub struct Btf {
    bytes: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// `types[id - 1]` is type `id`.
    types: Vec<TypeRecord>,
}

impl Btf {
    pub fn parse(bytes: Vec<u8>) -> Result<Self, BtfError> {
        let magic = read_u16(&bytes, 0)?;
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let header_len = read_u32(&bytes, 4)? as usize;
        let section = |at: usize| -> Result<std::ops::Range<usize>, BtfError> {
            let start = header_len + read_u32(&bytes, at)? as usize;
            let end = start + read_u32(&bytes, at + 4)? as usize;
            if end > bytes.len() || header_len < HEADER_LEN {
                return Err(BtfError::Truncated(end));
            }
            Ok(start..end)
        };
        let (type_section, strings) = (section(8)?, section(16)?);
        let types = index_types(&bytes, type_section)?;
        Ok(Self {
            bytes,
            strings,
            types,
        })
    }

    /// Byte offset of `field` in `struct name` (the first struct of that name that has it),
    /// descending into anonymous structs and unions. `None` for a bitfield or one not on a
    /// byte boundary.
    pub fn member_offset(&self, name: &str, field: &str) -> Option<u32> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_STRUCT && self.name(t.name_off).as_deref() == Some(name))
            .find_map(|t| self.find_member(t, field, 0))
    }

    fn find_member(&self, t: &TypeRecord, field: &str, base_bits: u32) -> Option<u32> {
        for i in 0..t.vlen {
            let at = t.data + i * 12;
            let name = self.name(read_u32(&self.bytes, at).ok()?)?;
            let type_id = read_u32(&self.bytes, at + 4).ok()?;
            let offset = read_u32(&self.bytes, at + 8).ok()?;
            let (bitfield, bit_offset) = if t.kind_flag {
                (offset >> 24, offset & 0x00ff_ffff)
            } else {
                (0, offset)
            };
            let bits = base_bits + bit_offset;
            if name == field {
                return (bitfield == 0 && bits.is_multiple_of(8)).then_some(bits / 8);
            }
            if name.is_empty()
                && let Some(inner) = self.aggregate(type_id)
                && let Some(found) = self.find_member(inner, field, bits)
            {
                return Some(found);
            }
        }
        None
    }

    /// The struct or union a member's type is, through typedefs and qualifiers.
    fn aggregate(&self, mut id: u32) -> Option<&TypeRecord> {
        // A chain of qualifiers is short; the bound only guards against a malformed loop.
        for _ in 0..32 {
            let t = self.types.get((id as usize).checked_sub(1)?)?;
            match t.kind {
                KIND_STRUCT | KIND_UNION => return Some(t),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return None,
            }
        }
        None
    }

    /// The NUL-terminated string at `offset` in the string section.
    fn name(&self, offset: u32) -> Option<Cow<'_, str>> {
        let start = self.strings.start.checked_add(offset as usize)?;
        let tail = self.bytes.get(start..self.strings.end)?;
        let end = tail.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&tail[..end]))
    }
}

/// Walks the type section once, recording where each type's record and data are.
fn index_types(bytes: &[u8], section: std::ops::Range<usize>) -> Result<Vec<TypeRecord>, BtfError> {
    let mut types = Vec::new();
    let mut at = section.start;
    while at < section.end {
        let info = read_u32(bytes, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let record = TypeRecord {
            name_off: read_u32(bytes, at)?,
            kind,
            kind_flag: info >> 31 == 1,
            vlen,
            size_or_type: read_u32(bytes, at + 8)?,
            data: at + 12,
        };
        let data_len = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            // Pointers, forwards, typedefs, qualifiers, functions, floats, type tags.
            1..=KIND_MAX => 0,
            _ => {
                return Err(BtfError::UnknownKind {
                    id: types.len() + 1,
                    kind,
                });
            }
        };
        types.push(record);
        at = record.data + data_len;
    }
    if at > section.end {
        return Err(BtfError::Truncated(at));
    }
    Ok(types)
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16, BtfError> {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or(BtfError::Truncated(at))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Truncated(at))
}

#[cfg(test)]
#[path = "btf_tests.rs"]
mod tests;

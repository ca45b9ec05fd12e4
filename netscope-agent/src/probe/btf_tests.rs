use super::*;

/// Builds a BTF blob the way the kernel lays one out, type by type.
#[derive(Default)]
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

impl Blob {
    fn new() -> Self {
        Self {
            strings: vec![0],
            ..Self::default()
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let at = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        at
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_ne_bytes());
        }
    }

    /// Adds a type; returns its id.
    fn add(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size_or_type: u32) -> u32 {
        let name = self.string(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        self.words(&[name, info, size_or_type]);
        self.count += 1;
        self.count
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.add(name, KIND_INT, false, 0, bytes);
        self.words(&[bytes * 8]);
        id
    }

    /// A struct or union with (name, type, offset word) members.
    fn aggregate(
        &mut self,
        kind: u32,
        name: &str,
        flag: bool,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.add(name, kind, flag, members.len() as u32, 64);
        for (m, ty, off) in members {
            let m = self.string(m);
            self.words(&[m, *ty, *off]);
        }
        id
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            HEADER_LEN as u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// `struct sock { int pad; int sk_err; }` and a `tcp_sock` whose `srtt_us` sits in an
/// anonymous union (behind a const typedef) at bit 64 + 32, with a bitfield beside it.
fn sample() -> Btf {
    let mut b = Blob::new();
    let int = b.int("int", 4);
    b.aggregate(
        KIND_STRUCT,
        "sock",
        false,
        &[("pad", int, 0), ("sk_err", int, 32)],
    );
    let inner = b.aggregate(
        KIND_UNION,
        "",
        false,
        &[("srtt_us", int, 32), ("other", int, 0)],
    );
    let typedef = b.add("inner_t", KIND_TYPEDEF, false, 0, inner);
    let constant = b.add("", KIND_CONST, false, 0, typedef);
    let bits = (3 << 24) | 8;
    b.aggregate(
        KIND_STRUCT,
        "tcp_sock",
        true,
        &[("head", int, 0), ("flags", int, bits), ("", constant, 64)],
    );
    Btf::parse(b.bytes()).unwrap()
}

#[test]
fn a_direct_member_is_found_at_its_byte_offset() {
    assert_eq!(sample().member_offset("sock", "sk_err"), Some(4));
}

#[test]
fn a_member_of_an_anonymous_union_behind_qualifiers_adds_its_parents_offset() {
    assert_eq!(sample().member_offset("tcp_sock", "srtt_us"), Some(12));
}

#[test]
fn bitfields_missing_members_and_missing_structs_have_no_offset() {
    let btf = sample();
    assert_eq!(btf.member_offset("tcp_sock", "flags"), None);
    assert_eq!(btf.member_offset("tcp_sock", "bytes_sent"), None);
    assert_eq!(btf.member_offset("udp_sock", "sk_err"), None);
}

#[test]
fn a_blob_that_is_not_btf_or_is_cut_short_is_refused() {
    assert_eq!(
        Btf::parse(vec![0x7f, b'E', b'L', b'F']).err(),
        Some(BtfError::Magic(u16::from_ne_bytes([0x7f, b'E'])))
    );
    let mut bytes = {
        let mut b = Blob::new();
        b.int("int", 4);
        b.bytes()
    };
    bytes.truncate(bytes.len() - 3);
    assert!(matches!(Btf::parse(bytes), Err(BtfError::Truncated(_))));
}

#[test]
fn an_unknown_kind_is_refused_rather_than_misread() {
    let mut b = Blob::new();
    b.add("future", 31, false, 0, 0);
    assert_eq!(
        Btf::parse(b.bytes()).err(),
        Some(BtfError::UnknownKind { id: 1, kind: 31 })
    );
}

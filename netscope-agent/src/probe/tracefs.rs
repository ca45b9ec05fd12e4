//! Tracepoint record layouts, read from tracefs `format` files at load time (offsets differ
//! between kernels: they are never hard-coded).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use netscope_common::{SetStateOffsets, SockLengthOffsets};

use super::ProbeError;

/// Where tracefs is usually mounted, in order of preference.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, by name (array suffixes such as `[4]` removed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub tracepoint: String,
    fields: HashMap<String, Field>,
}

impl Format {
    /// Parses the text of a `format` file.
    pub fn parse(tracepoint: &str, text: &str) -> Result<Self, ProbeError> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';').map(str::trim) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.trim().parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.trim().parse::<u32>().ok();
                } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                    decl = Some(part);
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                return Err(ProbeError::TracepointFormat {
                    tracepoint: tracepoint.to_owned(),
                    reason: format!("unreadable line `{line}`"),
                });
            };
            // `const void * skaddr` → `skaddr`; `__u8 saddr[4]` → `saddr`.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or(decl);
            let name = name.split('[').next().unwrap_or(name);
            fields.insert(name.to_owned(), Field { offset, size });
        }
        if fields.is_empty() {
            return Err(ProbeError::TracepointFormat {
                tracepoint: tracepoint.to_owned(),
                reason: "no fields".to_owned(),
            });
        }
        Ok(Self {
            tracepoint: tracepoint.to_owned(),
            fields,
        })
    }

    /// Offset of a field that must exist with exactly `size` bytes.
    pub fn offset(&self, name: &str, size: u32) -> Result<u32, ProbeError> {
        match self.fields.get(name) {
            Some(f) if f.size == size => Ok(f.offset),
            Some(f) => Err(ProbeError::TracepointFormat {
                tracepoint: self.tracepoint.clone(),
                reason: format!("field `{name}` has {} bytes, expected {size}", f.size),
            }),
            None => Err(ProbeError::TracepointFormat {
                tracepoint: self.tracepoint.clone(),
                reason: format!("no field `{name}`"),
            }),
        }
    }

    /// Offset of a field that some kernels have, with exactly `size` bytes where it exists.
    pub fn optional_offset(&self, name: &str, size: u32) -> Result<Option<u32>, ProbeError> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(_) => self.offset(name, size).map(Some),
        }
    }

    pub fn set_state_offsets(&self) -> Result<SetStateOffsets, ProbeError> {
        Ok(SetStateOffsets {
            skaddr: self.offset("skaddr", 8)?,
            oldstate: self.offset("oldstate", 4)?,
            newstate: self.offset("newstate", 4)?,
            sport: self.offset("sport", 2)?,
            dport: self.offset("dport", 2)?,
            family: self.offset("family", 2)?,
            protocol: self.offset("protocol", 2)?,
            saddr: self.offset("saddr", 4)?,
            daddr: self.offset("daddr", 4)?,
            saddr_v6: self.offset("saddr_v6", 16)?,
            daddr_v6: self.offset("daddr_v6", 16)?,
            _pad: 0,
        })
    }

    pub fn sock_length_offsets(&self) -> Result<SockLengthOffsets, ProbeError> {
        Ok(SockLengthOffsets {
            sk: self.offset("sk", 8)?,
            ret: self.offset("ret", 4)?,
            flags: self.offset("flags", 4)?,
            _pad: 0,
        })
    }
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs, or says what is wrong: not mounted (and how to mount it), or
    /// mounted but closed to this process (tracefs is root's alone, mode 0700).
    pub fn locate() -> Result<Self, ProbeError> {
        let mut denied = None;
        for root in TRACEFS_ROOTS.iter().map(Path::new) {
            match fs::metadata(root.join("events")) {
                Ok(m) if m.is_dir() => {
                    return Ok(Self {
                        root: root.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    denied.get_or_insert(root);
                }
                _ => {}
            }
        }
        match denied {
            Some(root) => Err(ProbeError::TracefsDenied {
                path: root.to_path_buf(),
                // SAFETY: geteuid has no preconditions.
                uid: unsafe { libc::geteuid() },
            }),
            None => Err(ProbeError::TracefsMissing),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Reads and parses `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, ProbeError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let tracepoint = format!("{category}:{name}");
        let text = fs::read_to_string(&path).map_err(|e| ProbeError::TracepointMissing {
            tracepoint: tracepoint.clone(),
            path: path.clone(),
            source: e,
        })?;
        Format::parse(&tracepoint, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `sock:inet_sock_set_state` as printed by a 6.x kernel.
    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1402
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s\", REC->family, REC->protocol
";

    #[test]
    fn parses_set_state_offsets() {
        let format = Format::parse("sock:inet_sock_set_state", SET_STATE).unwrap();
        let o = format.set_state_offsets().unwrap();
        assert_eq!((o.skaddr, o.oldstate, o.newstate), (8, 16, 20));
        assert_eq!((o.sport, o.dport, o.family, o.protocol), (24, 26, 28, 30));
        assert_eq!((o.saddr, o.daddr, o.saddr_v6, o.daddr_v6), (32, 36, 40, 56));
    }

    #[test]
    fn a_moved_field_moves_its_offset() {
        let shifted = SET_STATE.replace("offset:24;\tsize:2", "offset:124;\tsize:2");
        let format = Format::parse("sock:inet_sock_set_state", &shifted).unwrap();
        assert_eq!(format.set_state_offsets().unwrap().sport, 124);
    }

    #[test]
    fn parses_sock_length_offsets() {
        let text = "\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;";
        let o = Format::parse("t", text)
            .unwrap()
            .sock_length_offsets()
            .unwrap();
        assert_eq!((o.sk, o.ret, o.flags), (8, 20, 24));
    }

    #[test]
    fn missing_or_resized_fields_are_named() {
        let missing = SET_STATE.replace("dport;", "dst_port;");
        let err = Format::parse("t", &missing)
            .unwrap()
            .set_state_offsets()
            .unwrap_err();
        assert!(err.to_string().contains("no field `dport`"), "{err}");

        let resized = SET_STATE.replace("skaddr;\toffset:8;\tsize:8", "skaddr;\toffset:8;\tsize:4");
        let err = Format::parse("t", &resized)
            .unwrap()
            .set_state_offsets()
            .unwrap_err();
        assert!(err.to_string().contains("`skaddr` has 4 bytes"), "{err}");
    }

    #[test]
    fn an_optional_field_is_none_where_the_kernel_lacks_it_and_checked_where_it_has_it() {
        let older = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;";
        let newer = format!("{older}\n\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;");
        let format = |text: &str| Format::parse("tcp:tcp_retransmit_skb", text).unwrap();
        assert_eq!(format(older).optional_offset("err", 4).unwrap(), None);
        assert_eq!(format(&newer).optional_offset("err", 4).unwrap(), Some(76));
        let err = format(&newer).optional_offset("err", 8).unwrap_err();
        assert!(err.to_string().contains("`err` has 4 bytes"), "{err}");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(Format::parse("t", "").is_err());
        assert!(Format::parse("t", "\tfield:int x;\toffset:zz;\tsize:4;").is_err());
    }

    #[test]
    fn this_kernel_formats_parse_when_tracefs_is_mounted() {
        let Ok(tracefs) = Tracefs::locate() else {
            eprintln!("skipped: tracefs not mounted");
            return;
        };
        let Ok(format) = tracefs.format("sock", "inet_sock_set_state") else {
            eprintln!("skipped: format not readable (not root?)");
            return;
        };
        format.set_state_offsets().unwrap();
    }
}

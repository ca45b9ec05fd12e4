//! The local audit spool: an append-only, checksummed write-ahead log of audit events between
//! the pipeline and RGW. Every event is spooled before it is acknowledged; the shipper uploads
//! sealed segments in sequence order and deletes each one once RGW holds it.
//!
//! Layout of `<dir>` (one directory per node):
//! - `<first seq:020>.open`: the segment being written (at most one);
//! - `<first seq:020>-<last seq:020>.seg`: sealed segments, waiting for upload (the names
//!   order them);
//! - `shipped`: the last sequence RGW holds (written before a shipped segment is deleted, so
//!   the numbering continues after a restart with an empty spool);
//! - `quarantine/`: corrupt segments and cut-off tails, kept for inspection, never shipped.
//!
//! A segment is the magic `NSSPOOL1`, then frames:
//! `u32 LE payload length | u32 LE CRC32 of the rest | u64 LE sequence | u64 LE event time (Unix
//! ms) | payload` — the payload is the event's JSON line. Sequences in a segment are
//! consecutive from the number in its name.
//!
//! Fsync policy: group commit. The writer appends every event waiting (up to a group), calls
//! `fdatasync` once, and only then acknowledges them: an acknowledged event survives a crash of
//! the agent or of the machine. Creating, sealing (rename) and deleting a segment fsync the
//! directory too.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tracing::{error, warn};

/// Where and how the spool writes. Validated with the rest of the configuration.
#[derive(Clone, Debug)]
pub struct SpoolSettings {
    /// The node's spool directory.
    pub dir: PathBuf,
    pub node: String,
    /// Disk the spool may use; beyond it, `deliver` waits (backpressure).
    pub budget_bytes: u64,
    pub batch_events: u64,
    pub batch_bytes: u64,
    pub batch_age: Duration,
    /// Events waiting for the writer at most.
    pub queue: usize,
}

const MAGIC: &[u8; 8] = b"NSSPOOL1";
const FRAME_HEADER: usize = 24;
const QUARANTINE: &str = "quarantine";
const SHIPPED: &str = "shipped";

/// One event as the spool keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub sequence: u64,
    pub unix_ms: u64,
    /// The event's JSON (no newline).
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.sequence.to_le_bytes());
        crc.update(&self.unix_ms.to_le_bytes());
        crc.update(&self.payload);
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.unix_ms.to_le_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// Why a segment's bytes are not a valid run of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("bad magic (not a spool segment)")]
    Magic,
    #[error("frame at byte {offset} is cut short")]
    Truncated { offset: usize },
    #[error("frame at byte {offset}: CRC mismatch")]
    Checksum { offset: usize },
    #[error("frame at byte {offset}: sequence {found}, expected {expected}")]
    Sequence {
        offset: usize,
        found: u64,
        expected: u64,
    },
    #[error("holds {holds} events, its name says {named}")]
    Count { holds: u64, named: u64 },
}

/// The frames of a segment up to the first invalid one, and what was wrong there (if any).
pub struct Parsed {
    pub frames: Vec<Frame>,
    /// Bytes of valid frames (incl. the magic).
    pub valid_len: usize,
    pub error: Option<Corruption>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses a segment whose first sequence is `first`.
pub fn parse(bytes: &[u8], first: u64) -> Parsed {
    let mut frames = Vec::new();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Parsed {
            frames,
            valid_len: 0,
            error: Some(Corruption::Magic),
        };
    }
    let mut at = MAGIC.len();
    let mut expected = first;
    let error = loop {
        if at == bytes.len() {
            break None;
        }
        if bytes.len() - at < FRAME_HEADER {
            break Some(Corruption::Truncated { offset: at });
        }
        let len = u32_at(bytes, at) as usize;
        let end = at + FRAME_HEADER + len;
        if end > bytes.len() {
            break Some(Corruption::Truncated { offset: at });
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[at + 8..end]);
        if crc.finalize() != u32_at(bytes, at + 4) {
            break Some(Corruption::Checksum { offset: at });
        }
        let sequence = u64_at(bytes, at + 8);
        if sequence != expected {
            break Some(Corruption::Sequence {
                offset: at,
                found: sequence,
                expected,
            });
        }
        frames.push(Frame {
            sequence,
            unix_ms: u64_at(bytes, at + 16),
            payload: bytes[at + FRAME_HEADER..end].to_vec(),
        });
        expected += 1;
        at = end;
    };
    Parsed {
        frames,
        valid_len: at,
        error,
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `<first:020>.open` → first.
fn open_first(path: &Path) -> Option<u64> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".open")?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// `<first:020>-<last:020>.seg` → (first, last).
fn sealed_range(path: &Path) -> Option<(u64, u64)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".seg")?;
    let (first, last) = stem.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

pub fn open_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.open"))
}

pub fn sealed_path(dir: &Path, first: u64, last: u64) -> PathBuf {
    dir.join(format!("{first:020}-{last:020}.seg"))
}

/// A sealed segment waiting for upload: events `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub path: PathBuf,
    pub first: u64,
    pub last: u64,
    pub bytes: u64,
}

/// Moves a corrupt file into `quarantine/`, and says so loudly. Returns where it went.
pub fn quarantine(dir: &Path, path: &Path, why: &str) -> io::Result<PathBuf> {
    let qdir = dir.join(QUARANTINE);
    fs::create_dir_all(&qdir)?;
    let name = path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    let mut to = qdir.join(&name);
    let mut n = 1;
    while to.exists() {
        to = qdir.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &to)?;
    sync_dir(dir)?;
    error!(segment = %path.display(), moved_to = %to.display(), reason = why,
        "audit spool segment is corrupt: quarantined, its events are NOT shipped (`audit verify` will show the gap)");
    Ok(to)
}

/// What a spool directory held at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// In sequence order.
    pub sealed: Vec<Sealed>,
    /// The next sequence to number an event with.
    pub next: u64,
    /// Files moved to quarantine (corrupt, or a torn tail cut off the open segment).
    pub quarantined: Vec<PathBuf>,
}

fn read_shipped(dir: &Path) -> io::Result<u64> {
    match fs::read_to_string(dir.join(SHIPPED)) {
        Ok(s) => s.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a sequence number", dir.join(SHIPPED).display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Records that RGW holds every event up to `last` (atomically: temp file, fsync, rename).
/// RGW holds `seg`'s events: records its last sequence as shipped (so numbering continues after
/// a restart with an empty spool), then deletes the segment, durably.
pub fn delete_shipped(dir: &Path, seg: &Sealed) -> io::Result<()> {
    write_shipped(dir, seg.last)?;
    fs::remove_file(&seg.path)?;
    sync_dir(dir)
}

pub fn write_shipped(dir: &Path, last: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{SHIPPED}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{last}\n").as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(SHIPPED))?;
    sync_dir(dir)
}

/// Opens a spool directory after a stop or a crash: the open segment (if any) keeps its valid
/// frames and is sealed — a torn tail (events never acknowledged) is cut off into quarantine;
/// sealed segments are checked later, when they are read for upload.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    fs::create_dir_all(dir)?;
    let mut out = Recovered {
        next: read_shipped(dir)? + 1,
        ..Recovered::default()
    };
    let mut open = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some((first, last)) = sealed_range(&path) {
            let bytes = fs::metadata(&path)?.len();
            out.next = out.next.max(last + 1);
            out.sealed.push(Sealed {
                path,
                first,
                last,
                bytes,
            });
        } else if let Some(first) = open_first(&path) {
            open.push((first, path));
        }
    }
    open.sort();
    for (first, path) in open {
        if let Some(sealed) = seal_open_file(dir, first, &path, &mut out.quarantined)? {
            out.next = out.next.max(sealed.last + 1);
            out.sealed.push(sealed);
        }
    }
    sync_dir(dir)?;
    out.sealed.sort_by_key(|s| s.first);
    Ok(out)
}

/// Seals an open segment file that no writer holds (after a crash): its valid frames are kept
/// and sealed, an invalid tail is cut off into quarantine (listed in `quarantined`); a file
/// without a valid frame is removed (or quarantined, when it holds bytes). `None` when nothing
/// was left to seal.
fn seal_open_file(
    dir: &Path,
    first: u64,
    path: &Path,
    quarantined: &mut Vec<PathBuf>,
) -> io::Result<Option<Sealed>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let parsed = parse(&bytes, first);
    if let Some(why) = &parsed.error
        && parsed.valid_len < bytes.len()
    {
        if parsed.valid_len == 0 {
            quarantined.push(quarantine(dir, path, &why.to_string())?);
            return Ok(None);
        }
        // Keep the cut-off bytes: they may be more than an unacknowledged torn write.
        let qdir = dir.join(QUARANTINE);
        fs::create_dir_all(&qdir)?;
        let tail = qdir.join(format!("{first:020}.tail-at-{}", parsed.valid_len));
        fs::write(&tail, &bytes[parsed.valid_len..])?;
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(parsed.valid_len as u64)?;
        f.sync_all()?;
        warn!(segment = %path.display(), reason = %why, cut_bytes = bytes.len() - parsed.valid_len,
            kept_in = %tail.display(), "audit spool: the open segment ended with an invalid tail (a crash mid-write): cut off");
        quarantined.push(tail);
    }
    if parsed.frames.is_empty() {
        fs::remove_file(path)?;
        return Ok(None);
    }
    let last = first + parsed.frames.len() as u64 - 1;
    let sealed = sealed_path(dir, first, last);
    fs::rename(path, &sealed)?;
    sync_dir(dir)?;
    Ok(Some(Sealed {
        bytes: parsed.valid_len as u64,
        path: sealed,
        first,
        last,
    }))
}

/// The segment being written.
pub struct OpenSegment {
    file: File,
    pub path: PathBuf,
    pub first: u64,
    pub events: u64,
    /// Bytes of acknowledged frames (and the magic).
    pub bytes: u64,
    /// Past `bytes` the file holds what a failed append left: cut it before anything else.
    torn: bool,
}

impl OpenSegment {
    /// Creates `<first>.open` holding the magic, durably. A file of that name can only be
    /// what a failed earlier attempt of this writer left (recovery seals every `.open` file at
    /// start, and no event of it was acknowledged): it is set aside in quarantine, never
    /// overwritten. A failed create removes what it made.
    pub fn create(dir: &Path, first: u64) -> io::Result<Self> {
        let path = open_path(dir, first);
        let file = match Self::create_new(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                quarantine(
                    dir,
                    &path,
                    "left by a failed write: no event of it was acknowledged",
                )?;
                Self::create_new(&path)?
            }
            other => other?,
        };
        let mut made = Self {
            file,
            path,
            first,
            events: 0,
            bytes: MAGIC.len() as u64,
            torn: false,
        };
        let durable = write_frames(&mut made.file, MAGIC)
            .and_then(|()| made.file.sync_all())
            .and_then(|()| sync_dir(dir));
        if let Err(e) = durable {
            let _ = fs::remove_file(&made.path);
            return Err(e);
        }
        Ok(made)
    }

    fn create_new(path: &Path) -> io::Result<File> {
        OpenOptions::new().create_new(true).write(true).open(path)
    }

    /// Appends encoded frames and makes them durable. On error nothing of them counts and the
    /// file is cut back to its acknowledged frames — now, or before the next append when the
    /// cut itself failed — so that the same sequence numbers are used again, with no hole.
    ///
    /// Writing on after a failed `fdatasync` is safe here: every acknowledged frame was made
    /// durable by an earlier `fdatasync` that succeeded, and the pages the failed one may have
    /// dropped are exactly those cut off.
    pub fn append(&mut self, frames: &[u8], count: u64) -> io::Result<()> {
        if self.torn {
            self.restore()?;
        }
        let written = write_frames(&mut self.file, frames).and_then(|()| sync(&self.file));
        if let Err(e) = written {
            let _ = self.restore();
            return Err(e);
        }
        self.bytes += frames.len() as u64;
        self.events += count;
        Ok(())
    }

    /// Cuts the file back to its acknowledged frames, with the write position there too (a
    /// position left past the cut would write the next frames after a hole of zeros).
    fn restore(&mut self) -> io::Result<()> {
        self.torn = true;
        cut(&self.file, self.bytes)?;
        self.file.seek(SeekFrom::Start(self.bytes))?;
        sync(&self.file)?;
        self.torn = false;
        Ok(())
    }

    /// The file ends past its acknowledged frames (a failed append whose cut failed too).
    pub fn torn(&self) -> bool {
        self.torn
    }

    /// Renames the segment to `<first>-<last>.seg`: it is complete and may be shipped.
    /// Only a segment holding events is sealed (an empty one is [`Self::discard`]ed). A torn one
    /// is cut first; when that fails it stays open, for the recovery at the next start.
    pub fn seal(mut self, dir: &Path) -> io::Result<Sealed> {
        if self.torn {
            self.restore()?;
        }
        let last = self.first + self.events.max(1) - 1;
        let path = sealed_path(dir, self.first, last);
        drop(self.file);
        fs::rename(&self.path, &path)?;
        sync_dir(dir)?;
        Ok(Sealed {
            path,
            first: self.first,
            last,
            bytes: self.bytes,
        })
    }

    /// An empty segment is removed rather than sealed.
    pub fn discard(self) -> io::Result<()> {
        drop(self.file);
        fs::remove_file(&self.path)
    }
}

// The file operations a disk fault can fail, each a fault point for the tests.

fn write_frames(file: &mut File, frames: &[u8]) -> io::Result<()> {
    crate::fault_point!("audit-spool-write", |_| Err(io::Error::from_raw_os_error(
        libc::ENOSPC
    )));
    file.write_all(frames)
}

fn sync(file: &File) -> io::Result<()> {
    crate::fault_point!("audit-spool-sync", |_| Err(io::Error::from_raw_os_error(
        libc::EIO
    )));
    file.sync_data()
}

fn cut(file: &File, len: u64) -> io::Result<()> {
    crate::fault_point!("audit-spool-cut", |_| Err(io::Error::from_raw_os_error(
        libc::EIO
    )));
    file.set_len(len)
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;

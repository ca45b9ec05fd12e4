//! The in-flight journal: which records this agent was working on, kept on the spool's disk, so
//! that after the process died (a bug, an OOM kill) the next start knows what it died with.
//!
//! Every state change of a record is one line appended with a plain `write` — no `fsync`: a
//! process that dies leaves its writes in the page cache, and process death is what the journal
//! is for (after a machine crash the records are replayed as any uncommitted record is):
//! `s <topic> <partition> <offset>` (handed out, normalising), `q …` (queued), `x …` (executing:
//! its side effects may have happened), `f …` (finished). A clean stop appends `clean`.
//!
//! At start the journal is read back. What was being normalised or executed at a death (not
//! what merely waited in the queue) becomes a suspect, counted over consecutive deaths in
//! `<journal>.suspects`; a record not being worked on at a death stops being one. Suspects run
//! one at a time (`Job::suspect`), so that the next death names the record that caused it and
//! not the ones that happened to run beside it. Ingest asks before it runs a record again:
//! - in flight at two consecutive deaths: dead-lettered as `poison` — it is what kills the
//!   agent, and each node it moves to would die of it in turn;
//! - executing at a death, and not safe to repeat (a POST or PATCH without an idempotency key,
//!   unless its target says `replay_unsafe = true`): dead-lettered as `maybe_executed`.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use tracing::{info, warn};

use crate::domain::RecordRef;

/// Compaction threshold: past this, the journal is rewritten with only what is in flight.
const COMPACT_BYTES: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Being read and normalised by ingest (one record at a time).
    Handling,
    /// Valid, waiting for a worker: nothing of it has run; a death now says nothing of it.
    Queued,
    /// Being executed: the call may have reached its target.
    Executing,
}

/// A record the agent died with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suspect {
    /// Consecutive deaths it was in flight at.
    pub deaths: u32,
    /// The furthest it got at the last of them.
    pub stage: Stage,
}

type Key = (String, i32, i64);

fn key(r: &RecordRef) -> Key {
    (r.topic.clone(), r.partition, r.offset)
}

/// What a journal's lines say was in flight at its end: `None` after a clean stop.
fn in_flight_at_end(text: &str) -> Option<HashMap<Key, Stage>> {
    let mut state: HashMap<Key, Stage> = HashMap::new();
    let mut clean = false;
    for line in text.lines() {
        if line == "clean" {
            clean = true;
            continue;
        }
        clean = false;
        let mut f = line.split(' ');
        let (Some(op), Some(topic), Some(p), Some(o), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue; // a torn last line
        };
        let (Ok(partition), Ok(offset)) = (p.parse(), o.parse()) else {
            continue;
        };
        let k = (topic.to_owned(), partition, offset);
        match (op, Stage::of_code(op)) {
            (_, Some(stage)) => {
                state.insert(k, stage);
            }
            ("f", None) => {
                state.remove(&k);
            }
            _ => {}
        }
    }
    (!clean).then_some(state)
}

/// The suspects after a death with `died_with` in flight: counts go on for those in flight
/// again, the others are cleared. A clean stop clears them all.
fn next_suspects(
    before: &HashMap<Key, Suspect>,
    died_with: Option<HashMap<Key, Stage>>,
) -> HashMap<Key, Suspect> {
    died_with
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, stage)| *stage != Stage::Queued)
        .map(|(k, stage)| {
            let deaths = before.get(&k).map_or(0, |s| s.deaths) + 1;
            (k, Suspect { deaths, stage })
        })
        .collect()
}

fn parse_suspects(text: &str) -> HashMap<Key, Suspect> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let [deaths, stage, topic, p, o] = f.as_slice() else {
                return None;
            };
            let stage = Stage::of_code(stage)?;
            Some((
                ((*topic).to_owned(), p.parse().ok()?, o.parse().ok()?),
                Suspect {
                    deaths: deaths.parse().ok()?,
                    stage,
                },
            ))
        })
        .collect()
}

impl Stage {
    /// Its letter in the journal and the suspects file.
    fn code(self) -> &'static str {
        match self {
            Self::Handling => "s",
            Self::Queued => "q",
            Self::Executing => "x",
        }
    }

    fn of_code(code: &str) -> Option<Self> {
        [Self::Handling, Self::Queued, Self::Executing]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

/// One journal line: `<code> <topic> <partition> <offset>`.
fn line(code: &str, (topic, partition, offset): &Key) -> String {
    format!("{code} {topic} {partition} {offset}\n")
}

struct Open {
    file: File,
    bytes: u64,
    /// What is in flight now (for compaction).
    now: HashMap<Key, Stage>,
}

pub struct InFlightJournal {
    path: Option<PathBuf>,
    open: Mutex<Option<Open>>,
    suspects: Mutex<HashMap<Key, Suspect>>,
}

impl InFlightJournal {
    /// No journal (tests of ingest alone, tools): nothing is remembered, nothing suspected.
    pub fn disabled() -> Self {
        Self {
            path: None,
            open: Mutex::new(None),
            suspects: Mutex::default(),
        }
    }

    /// Reads what the last run died with, records the suspects, and starts a new journal.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let suspects_path = suspects_path(path);
        let before = match fs::read_to_string(&suspects_path) {
            Ok(text) => parse_suspects(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        let died_with = match fs::read_to_string(path) {
            Ok(text) => in_flight_at_end(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let suspects = next_suspects(&before, died_with);
        if !suspects.is_empty() {
            warn!(records = suspects.len(), journal = %path.display(),
                "the last run died with records in flight: each is checked before it runs again");
        }
        write_atomically(&suspects_path, &render_suspects(&suspects))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            open: Mutex::new(Some(Open {
                file,
                bytes: 0,
                now: HashMap::new(),
            })),
            suspects: Mutex::new(suspects),
        })
    }

    /// Whether `r` is a record the last run(s) died with (asked once: the answer is forgotten).
    pub fn suspect(&self, r: &RecordRef) -> Option<Suspect> {
        self.suspects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key(r))
    }

    pub fn handling(&self, r: &RecordRef) {
        self.set(r, Some(Stage::Handling));
    }

    pub fn queued(&self, r: &RecordRef) {
        self.set(r, Some(Stage::Queued));
    }

    pub fn executing(&self, r: &RecordRef) {
        self.set(r, Some(Stage::Executing));
    }

    pub fn finished(&self, r: &RecordRef) {
        self.set(r, None);
    }

    /// A revoked partition's records are no longer this agent's.
    pub fn forget(&self, topic: &str, partition: i32) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(o) = open.as_mut() else { return };
        let gone: Vec<Key> = o
            .now
            .keys()
            .filter(|(t, p, _)| t == topic && *p == partition)
            .cloned()
            .collect();
        for k in gone {
            o.now.remove(&k);
            self.append(o, &line("f", &k));
        }
    }

    /// A clean stop: nothing in flight died with the process.
    pub fn close_clean(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(o) = open.as_mut() {
            self.append(o, "clean\n");
        }
    }

    fn set(&self, r: &RecordRef, stage: Option<Stage>) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(o) = open.as_mut() else { return };
        let k = key(r);
        let text = match stage {
            Some(s) => {
                let text = line(s.code(), &k);
                o.now.insert(k, s);
                text
            }
            None => {
                let text = line("f", &k);
                o.now.remove(&k);
                text
            }
        };
        self.append(o, &text);
        if o.bytes > COMPACT_BYTES {
            self.compact(o);
        }
    }

    fn append(&self, o: &mut Open, line: &str) {
        match o.file.write_all(line.as_bytes()) {
            Ok(()) => o.bytes += line.len() as u64,
            Err(e) => {
                warn!(error = %e, "in-flight journal: a write failed (poison detection is weaker until it works again)")
            }
        }
    }

    /// Rewrites the journal with only what is in flight now.
    fn compact(&self, o: &mut Open) {
        let Some(path) = &self.path else { return };
        let text: String = o.now.iter().map(|(k, s)| line(s.code(), k)).collect();
        let reopened =
            write_atomically(path, &text).and_then(|()| OpenOptions::new().append(true).open(path));
        match reopened {
            Ok(file) => {
                o.file = file;
                o.bytes = text.len() as u64;
            }
            Err(e) => warn!(error = %e, "in-flight journal: compaction failed"),
        }
        info!(in_flight = o.now.len(), "in-flight journal compacted");
    }
}

fn suspects_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".suspects");
    PathBuf::from(name)
}

fn render_suspects(suspects: &HashMap<Key, Suspect>) -> String {
    suspects
        .iter()
        .map(|(k, s)| format!("{} {}", s.deaths, line(s.stage.code(), k)))
        .collect()
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: i64) -> RecordRef {
        RecordRef {
            topic: "req".into(),
            partition: 0,
            offset,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ns-inflight-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d.join("node.inflight")
    }

    #[test]
    fn what_a_run_died_with_is_suspected_and_two_deaths_in_a_row_make_it_poison() {
        let path = dir("deaths");
        let j = InFlightJournal::open(&path).unwrap();
        j.handling(&r(1));
        j.handling(&r(2));
        j.executing(&r(2));
        j.handling(&r(3));
        j.finished(&r(3));
        j.handling(&r(4));
        j.queued(&r(4));
        drop(j); // the process dies: no `clean`

        let j = InFlightJournal::open(&path).unwrap();
        let one = |deaths, stage| Some(Suspect { deaths, stage });
        assert_eq!(j.suspect(&r(1)), one(1, Stage::Handling));
        assert_eq!(j.suspect(&r(2)), one(1, Stage::Executing));
        assert_eq!(j.suspect(&r(3)), None, "finished");
        assert_eq!(j.suspect(&r(4)), None, "only queued: nothing of it ran");
        assert_eq!(j.suspect(&r(1)), None, "asked once");
        // Record 2 runs again and kills this run too; record 1 finished this time.
        j.handling(&r(1));
        j.finished(&r(1));
        j.handling(&r(2));
        drop(j);

        let j = InFlightJournal::open(&path).unwrap();
        assert_eq!(
            j.suspect(&r(2)),
            one(2, Stage::Handling),
            "two deaths in a row"
        );
        assert_eq!(j.suspect(&r(1)), None);
        j.close_clean();
        drop(j);
        let j = InFlightJournal::open(&path).unwrap();
        assert_eq!(
            j.suspect(&r(2)),
            None,
            "a clean stop clears every suspicion"
        );
    }

    #[test]
    fn a_torn_last_line_and_a_revoked_partition_are_not_suspects() {
        let path = dir("torn");
        let j = InFlightJournal::open(&path).unwrap();
        j.handling(&r(5));
        j.handling(&RecordRef {
            topic: "req".into(),
            partition: 1,
            offset: 9,
        });
        j.forget("req", 1);
        drop(j);
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("x req 0");
        fs::write(&path, text).unwrap();
        let j = InFlightJournal::open(&path).unwrap();
        assert_eq!(j.suspects.lock().unwrap().len(), 1, "only record 5");
        assert!(j.suspect(&r(5)).is_some());
    }
}

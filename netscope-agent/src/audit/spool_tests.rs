use super::*;

fn frame(seq: u64) -> Frame {
    Frame {
        sequence: seq,
        unix_ms: 1_795_690_000_000 + seq,
        payload: format!("{{\"sequence\":{seq}}}").into_bytes(),
    }
}

fn encoded(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for s in range {
        frame(s).encode_into(&mut out);
    }
    out
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ns-spool-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

#[test]
fn frames_round_trip_and_every_corruption_is_named() {
    let _faults = crate::faults::serial();
    let mut bytes = MAGIC.to_vec();
    bytes.extend(encoded(5..=7));
    let p = parse(&bytes, 5);
    assert_eq!(p.frames, vec![frame(5), frame(6), frame(7)]);
    assert_eq!((p.valid_len, p.error), (bytes.len(), None));

    let mut flipped = bytes.clone();
    let second = MAGIC.len() + FRAME_HEADER + frame(5).payload.len();
    flipped[second + FRAME_HEADER] ^= 1;
    let p = parse(&flipped, 5);
    assert_eq!(p.frames.len(), 1);
    assert_eq!(p.error, Some(Corruption::Checksum { offset: second }));

    let p = parse(&bytes[..bytes.len() - 3], 5);
    assert_eq!(p.frames.len(), 2);
    assert!(matches!(p.error, Some(Corruption::Truncated { .. })));

    let p = parse(&bytes, 4);
    assert!(matches!(
        p.error,
        Some(Corruption::Sequence {
            found: 5,
            expected: 4,
            ..
        })
    ));
    assert_eq!(parse(b"NOTSPOOL", 1).error, Some(Corruption::Magic));
}

#[test]
fn recovery_seals_the_open_segment_cuts_a_torn_tail_and_continues_the_numbering() {
    let _faults = crate::faults::serial();
    let dir = tempdir("recover");
    fs::create_dir_all(&dir).unwrap();
    // Nothing at all: numbering starts at 1.
    assert_eq!(recover(&dir).unwrap().next, 1);

    let mut seg = OpenSegment::create(&dir, 1).unwrap();
    seg.append(&encoded(1..=3), 3).unwrap();
    let sealed = seg.seal(&dir).unwrap();
    let mut open = OpenSegment::create(&dir, 4).unwrap();
    open.append(&encoded(4..=5), 2).unwrap();
    drop(open);
    // A crash mid-write: half a frame at the end of the open segment.
    let half = &encoded(6..=6)[..10];
    let mut f = OpenOptions::new()
        .append(true)
        .open(open_path(&dir, 4))
        .unwrap();
    f.write_all(half).unwrap();
    drop(f);

    let r = recover(&dir).unwrap();
    assert_eq!(r.next, 6);
    assert_eq!(r.sealed.len(), 2);
    assert_eq!(r.sealed[0], sealed);
    assert_eq!((r.sealed[1].first, r.sealed[1].last), (4, 5));
    let back = parse(&fs::read(&r.sealed[1].path).unwrap(), 4);
    assert_eq!(back.frames, vec![frame(4), frame(5)]);
    assert_eq!(back.error, None);
    assert_eq!(r.quarantined.len(), 1);
    assert_eq!(fs::read(&r.quarantined[0]).unwrap(), half);

    // Everything shipped and deleted: the numbering continues from `shipped`.
    for s in &r.sealed {
        fs::remove_file(&s.path).unwrap();
    }
    write_shipped(&dir, 5).unwrap();
    assert_eq!(recover(&dir).unwrap().next, 6);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_open_segment_with_nothing_valid_is_quarantined_not_dropped() {
    let _faults = crate::faults::serial();
    let dir = tempdir("garbage");
    fs::create_dir_all(&dir).unwrap();
    fs::write(open_path(&dir, 9), b"garbage!garbage!").unwrap();
    let r = recover(&dir).unwrap();
    assert!(r.sealed.is_empty());
    assert_eq!(r.quarantined.len(), 1);
    assert_eq!(fs::read(&r.quarantined[0]).unwrap(), b"garbage!garbage!");
    let _ = fs::remove_dir_all(&dir);
}

/// Fault points are process-wide: these tests take turns (`FailScenario` holds a lock).
#[cfg(feature = "failpoints")]
mod disk_faults {
    use super::*;

    fn frames_in(path: &Path, first: u64) -> Parsed {
        parse(&fs::read(path).unwrap(), first)
    }

    #[test]
    fn a_failed_fdatasync_acknowledges_nothing_and_the_same_numbers_are_written_again_without_a_hole()
     {
        let scenario = crate::faults::serial();
        let dir = tempdir("fsync");
        fs::create_dir_all(&dir).unwrap();
        let mut seg = OpenSegment::create(&dir, 1).unwrap();
        seg.append(&encoded(1..=2), 2).unwrap();
        fail::cfg("audit-spool-sync", "1*return").unwrap();
        let e = seg.append(&encoded(3..=4), 2).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(
            (seg.events, seg.torn()),
            (2, false),
            "nothing counted, the file cut back"
        );
        seg.append(&encoded(3..=5), 3).unwrap();
        let back = frames_in(&seg.path, 1);
        assert_eq!(back.error, None, "no hole, no stale frame");
        assert_eq!(back.frames, (1..=5).map(frame).collect::<Vec<_>>());
        drop(scenario);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn when_cutting_back_fails_too_the_cut_is_done_before_the_next_append_and_before_sealing() {
        let scenario = crate::faults::serial();
        let dir = tempdir("cut");
        fs::create_dir_all(&dir).unwrap();
        let mut seg = OpenSegment::create(&dir, 1).unwrap();
        seg.append(&encoded(1..=1), 1).unwrap();
        fail::cfg("audit-spool-sync", "1*return").unwrap();
        fail::cfg("audit-spool-cut", "2*return").unwrap();
        seg.append(&encoded(2..=3), 2).unwrap_err();
        assert!(seg.torn(), "the failed frames are still in the file");
        // The next append cuts first; while that fails, nothing is written.
        seg.append(&encoded(2..=2), 1).unwrap_err();
        assert_eq!(frames_in(&seg.path, 1).frames.len(), 3, "nothing appended");
        seg.append(&encoded(2..=2), 1).unwrap();
        let back = frames_in(&seg.path, 1);
        assert_eq!((back.frames, back.error), (vec![frame(1), frame(2)], None));

        // A torn segment is cut before it is sealed: what is shipped is exactly its events.
        fail::cfg("audit-spool-sync", "1*return").unwrap();
        fail::cfg("audit-spool-cut", "1*return").unwrap();
        seg.append(&encoded(3..=3), 1).unwrap_err();
        assert!(seg.torn());
        let sealed = seg.seal(&dir).unwrap();
        assert_eq!((sealed.first, sealed.last), (1, 2));
        let back = frames_in(&sealed.path, 1);
        assert_eq!((back.frames.len(), back.error), (2, None));
        drop(scenario);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_whose_creation_failed_leaves_no_file_that_blocks_the_next_attempt() {
        let scenario = crate::faults::serial();
        let dir = tempdir("create");
        fs::create_dir_all(&dir).unwrap();
        fail::cfg("audit-spool-write", "1*return").unwrap();
        let e = OpenSegment::create(&dir, 7).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(
            !open_path(&dir, 7).exists(),
            "a failed create removes its file"
        );
        assert_eq!(
            OpenSegment::create(&dir, 7).unwrap().bytes,
            MAGIC.len() as u64
        );

        // What an older agent's failed create left is set aside, not overwritten or in the way.
        fs::write(open_path(&dir, 8), b"NSSP").unwrap();
        OpenSegment::create(&dir, 8).unwrap();
        let quarantined: Vec<_> = fs::read_dir(dir.join(QUARANTINE)).unwrap().collect();
        assert_eq!(quarantined.len(), 1);
        drop(scenario);
        let _ = fs::remove_dir_all(&dir);
    }
}

//! Root-only tests against this machine's kernel: real programs attached, real traffic in a
//! network namespace per test, ground truth from the application itself, from TCP_INFO, or
//! from nftables counters. Without root they print why they are skipped (and fail when
//! NETSCOPE_REQUIRE_KERNEL_TESTS=1, as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use netscope_agent::{
    domain::{FlowOutcome, FlowState},
    probe::{LiveBytes, ProbeOptions, TracepointKind},
};
use netscope_common::{EventKind, counter};
use support::{Harness, NetNs, kernel_test};

/// Writes all of `data` with plain `write()` calls; returns how many calls it took.
fn write_counting(stream: &mut TcpStream, data: &[u8]) -> u64 {
    let (mut off, mut calls) = (0, 0);
    while off < data.len() {
        let end = (off + 256 * 1024).min(data.len());
        off += stream.write(&data[off..end]).unwrap();
        calls += 1;
    }
    calls
}

/// Reads until EOF with plain `read()` calls; returns (bytes, calls including the EOF read).
fn read_counting(stream: &mut TcpStream) -> (u64, u64) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut bytes, mut calls) = (0, 0);
    loop {
        let n = stream.read(&mut buf).unwrap();
        calls += 1;
        if n == 0 {
            return (bytes, calls);
        }
        bytes += n as u64;
    }
}

/// `n` connections to 127.0.0.1:`port`, one after the other, each closed by the server first
/// (so TIME_WAIT lands on its side and client ports stay free) after the client saw EOF.
fn connect_and_let_the_server_close(port: u16, n: usize) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = thread::spawn(move || {
        for _ in 0..n {
            drop(listener.accept().unwrap());
        }
    });
    for _ in 0..n {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
    server.join().unwrap();
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// The network namespace's `TcpExt` counter `name`, read from inside it (the calling thread's:
/// `/proc/net` would be the main thread's namespace).
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v.parse().unwrap())
}

fn tcp_info(stream: &TcpStream) -> libc::tcp_info {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0);
        info
    }
}

#[test]
fn bytes_and_calls_equal_what_the_application_wrote_and_read() {
    let Some(_serial) = kernel_test("bytes") else {
        return;
    };
    let probe = bytes_and_calls_match("bytes", 7101, true);
    assert_ne!(probe, LiveBytes::None, "run's configuration hooks messages");
}

#[test]
fn without_per_message_hooks_bytes_come_from_tcp_at_close_and_calls_are_unknown() {
    let Some(_serial) = kernel_test("bytes-at-close") else {
        return;
    };
    let probe = bytes_and_calls_match("closebytes", 7114, false);
    assert_eq!(
        probe,
        LiveBytes::None,
        "probe's configuration hooks no message"
    );
}

/// Connections of several shapes, each flow's bytes (and calls, where counted) checked against
/// what the application wrote and read; returns the per-message path the probe took.
fn bytes_and_calls_match(netns: &str, port: u16, per_message_hooks: bool) -> LiveBytes {
    let ns = NetNs::new(netns);
    let _in = ns.enter();
    let mut options = Harness::for_dport(port);
    options.per_message_hooks = per_message_hooks;
    let probe = Harness::start(&options);
    let live = probe.probe.live_bytes();
    let counted = live.counted_calls();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let cases: [(usize, usize); 5] = [
        (0, 1),
        (1, 0),
        (1_000, 2_000),
        (65_536, 100),
        (3 << 20, 1_500_000),
    ];
    // Server: an 8-byte header says how much to send back; read the rest to EOF, reply, close.
    let server = thread::spawn(move || {
        for _ in 0..cases.len() {
            let (mut s, _) = listener.accept().unwrap();
            let mut header = [0u8; 8];
            s.read_exact(&mut header).unwrap();
            std::io::copy(&mut s, &mut std::io::sink()).unwrap();
            s.write_all(&vec![7u8; u64::from_be_bytes(header) as usize])
                .unwrap();
        }
    });
    for (up, down) in cases {
        let unsent_before = tcp_ext("TCPRetransFail");
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let sport = client.local_addr().unwrap().port();
        let mut payload = (down as u64).to_be_bytes().to_vec();
        payload.resize(8 + up, 1);
        let write_calls = write_counting(&mut client, &payload);
        client.shutdown(Shutdown::Write).unwrap();
        let (read, read_calls) = read_counting(&mut client);
        assert_eq!(read, down as u64);
        // On a loaded machine a tail-loss probe can fire even on loopback: the kernel's own
        // count is the reference, not zero — less the retransmissions it failed to send, which
        // TCP counts and NetScope does not.
        let unsent = tcp_ext("TCPRetransFail") - unsent_before;
        let kernel_retrans = tcp_info(&client).tcpi_total_retrans - unsent as u32;
        drop(client);

        let flow = probe.finished_flow(sport);
        assert_eq!(flow.state, FlowState::Closed);
        assert_eq!(flow.outcome, Some(FlowOutcome::Closed), "{flow:?}");
        assert_eq!(
            flow.bytes_sent,
            payload.len() as u64,
            "sent, case {up}/{down}"
        );
        assert_eq!(flow.bytes_received, read, "received, case {up}/{down}");
        // Before 6.4 the bytes at close are TCP's own counters, and calls are counted only
        // where a hook sees each one.
        let sends = counted.sends.then_some(write_calls);
        let recvs = counted.receives.then_some(read_calls);
        assert_eq!(flow.send_calls, sends, "send calls, case {up}/{down}");
        assert_eq!(flow.recv_calls, recvs, "recv calls, case {up}/{down}");
        assert_eq!(
            flow.retransmits, kernel_retrans,
            "retransmits sent, case {up}/{down} ({unsent} not sent)"
        );
        assert_eq!(flow.pid, std::process::id());
    }
    server.join().unwrap();
    let (_, counters, delivered) = probe.finish();
    assert_eq!(counters.emitted(), delivered);
    assert_eq!(counters.dropped(), 0);
    live
}

#[test]
fn helper_reads_give_the_same_facts_as_direct_context_loads() {
    let Some(_serial) = kernel_test("field-reads") else {
        return;
    };
    const PORT: u16 = 7108;
    let ns = NetNs::new("fields");
    let _in = ns.enter();
    let mut options = Harness::for_dport(PORT);
    // The classic tracepoints' records, every field through bpf_probe_read.
    options.helper_reads_only = true;
    options.classic_tracepoints = true;
    let probe = Harness::start(&options);
    assert_eq!(probe.probe.tracepoint_kind(), TracepointKind::Classic);
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let sport = client.local_addr().unwrap().port();
    let writes = write_counting(&mut client, &[1u8; 70_000]);
    client.shutdown(Shutdown::Write).unwrap();
    std::io::copy(&mut server, &mut std::io::sink()).unwrap();
    server.write_all(&[2u8; 5_000]).unwrap();
    drop(server);
    let (read, reads) = read_counting(&mut client);
    drop(client);
    let flow = probe.finished_flow(sport);
    assert_eq!(flow.local, format!("127.0.0.1:{sport}").parse().unwrap());
    assert_eq!(flow.remote, format!("127.0.0.1:{PORT}").parse().unwrap());
    let counted = probe.probe.live_bytes().counted_calls();
    let writes = counted.sends.then_some(writes);
    let reads_counted = counted.receives.then_some(reads);
    assert_eq!((flow.bytes_sent, flow.send_calls), (70_000, writes));
    assert_eq!(
        (flow.bytes_received, flow.recv_calls),
        (read, reads_counted)
    );
    assert_eq!(flow.outcome, Some(FlowOutcome::Closed));
    assert!(flow.connect_latency_ns.is_some_and(|ns| ns > 0));
}

/// The kernel's interval lies inside the application's (it starts inside `connect()` and ends
/// before `connect()` returns) — asserted; then `Err` unless |kernel − application| ≤
/// max(2 %, 200 µs). Under emulation (`cargo xtask test-kernels`), where a system call alone
/// takes hundreds of µs, the floor is `NETSCOPE_LATENCY_FLOOR_US`.
fn latency_agrees(kernel_ns: u64, app: Duration) -> Result<(), String> {
    let app_ns = app.as_nanos() as u64;
    let floor_us: u64 = std::env::var("NETSCOPE_LATENCY_FLOOR_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tolerance = (app_ns / 50).max(floor_us * 1000);
    assert!(
        kernel_ns <= app_ns,
        "kernel {kernel_ns} ns > application {app_ns} ns"
    );
    (app_ns - kernel_ns <= tolerance)
        .then_some(())
        .ok_or_else(|| {
            format!(
                "kernel {kernel_ns} ns vs application {app_ns} ns: off by more than {tolerance} ns"
            )
        })
}

#[test]
fn connect_latency_agrees_with_the_application_including_a_slow_connect() {
    let Some(_serial) = kernel_test("latency") else {
        return;
    };
    const PORT: u16 = 7102;
    let ns = NetNs::new("latency");
    let _in = ns.enter();
    let probe = Harness::start(&Harness::for_dport(PORT));
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();

    // 20 connects, each within the tolerance. A loopback connect takes 10–100 µs here; a vCPU
    // stolen by the hypervisor, or an interrupt, outside the handshake (between the syscall's
    // entry and SYN_SENT, or after ESTABLISHED) inflates only the application's figure, by up
    // to ~250 µs on this VM. So each connect gets up to 3 tries to be measured undisturbed; the
    // containment (kernel ≤ application) must hold on every try.
    for _ in 0..20 {
        let mut last = Err(String::new());
        for _ in 0..3 {
            let started = Instant::now();
            let client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
            let app = started.elapsed();
            let sport = client.local_addr().unwrap().port();
            drop(listener.accept().unwrap());
            drop(client);
            let flow = probe.finished_flow(sport);
            last = latency_agrees(flow.connect_latency_ns.unwrap(), app);
            if last.is_ok() {
                break;
            }
        }
        last.unwrap();
    }

    // Slow connect: every SYN is dropped until the rule goes; the kernel resends after its 1 s
    // initial RTO and the handshake completes on that retransmission.
    ns.nft(&format!(
        "table inet slow {{\n chain out {{\n type filter hook output priority 0;\n tcp dport {PORT} tcp flags syn / syn,ack drop\n }}\n}}\n"
    ));
    let connector = thread::spawn(move || {
        let started = Instant::now();
        let client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
        (client, started.elapsed())
    });
    thread::sleep(Duration::from_millis(300));
    ns.nft("delete table inet slow");
    let (client, app) = connector.join().unwrap();
    let sport = client.local_addr().unwrap().port();
    // The kernel's own count for this socket is the ground truth (as in the retransmit test).
    let kernel_retrans = tcp_info(&client).tcpi_total_retrans;
    drop(listener.accept().unwrap());
    drop(client);
    let flow = probe.finished_flow(sport);
    let kernel = flow.connect_latency_ns.unwrap();
    assert!(
        kernel >= 900_000_000,
        "the SYN was dropped: ~1 s expected, got {kernel} ns"
    );
    latency_agrees(kernel, app).unwrap();
    assert_eq!(
        flow.retransmits, kernel_retrans,
        "the retransmitted SYN is counted as TCP_INFO counts it (connect took {kernel} ns): {flow:?}"
    );
    assert!(kernel_retrans >= 1, "TCP_INFO saw no SYN retransmission");
}

#[test]
fn refused_and_reset_connections_have_the_right_outcome() {
    let Some(_serial) = kernel_test("outcomes") else {
        return;
    };
    const CLOSED: u16 = 7103;
    const OPEN: u16 = 7104;
    let ns = NetNs::new("outcomes");
    let _in = ns.enter();
    let mut options = ProbeOptions::default();
    options.filters.dports = vec![CLOSED, OPEN];
    let probe = Harness::start(&options);

    // Refused: nothing listens.
    let err = TcpStream::connect(("127.0.0.1", CLOSED)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let failed = probe.wait_for("the refused connect", |evs| {
        evs.iter().any(|s| s.kind == EventKind::ConnectFailed)
    });
    let refused = &failed
        .iter()
        .find(|s| s.kind == EventKind::ConnectFailed)
        .unwrap()
        .flow;
    assert_eq!(refused.state, FlowState::Failed);
    assert_eq!(refused.outcome, Some(FlowOutcome::Refused));
    assert_eq!(refused.errno, Some(libc::ECONNREFUSED));
    assert_eq!(refused.connect_latency_ns, None);
    assert_eq!(refused.remote.port(), CLOSED);
    // The port connect() bound, though the kernel has put it back when the socket closes.
    assert_eq!(refused.local.ip().to_string(), "127.0.0.1");
    assert_ne!(refused.local.port(), 0, "{refused:?}");

    // Reset by the peer: the server closes with SO_LINGER 0.
    let listener = TcpListener::bind(("127.0.0.1", OPEN)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", OPEN)).unwrap();
    let sport = client.local_addr().unwrap().port();
    let (server_side, _) = listener.accept().unwrap();
    set_linger_zero(&server_side);
    drop(server_side);
    let mut buf = [0u8; 16];
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    drop(client);
    let flow = probe.finished_flow(sport);
    assert_eq!(flow.outcome, Some(FlowOutcome::ResetByPeer), "{flow:?}");
    assert_eq!(flow.resets_received, 1);
    assert_eq!(flow.resets_sent, 0);

    // Reset locally: the client closes with SO_LINGER 0.
    let client = TcpStream::connect(("127.0.0.1", OPEN)).unwrap();
    let sport = client.local_addr().unwrap().port();
    let (_server_side, _) = listener.accept().unwrap();
    set_linger_zero(&client);
    drop(client);
    let flow = probe.finished_flow(sport);
    assert_eq!(flow.outcome, Some(FlowOutcome::ResetLocally), "{flow:?}");
    assert_eq!(flow.resets_sent, 1);
    assert_eq!(flow.resets_received, 0);
}

/// A bulk write over a 1500-byte MTU: TCP sends it in GSO skbs of many segments, and after the
/// RTO it retransmits several segments per skb as its window reopens. The count is in
/// segments, as TCP_INFO's.
#[test]
fn retransmits_equal_the_kernels_own_tcp_info_segment_for_segment() {
    retransmits_match("retrans", false, Some(1_500), 200_000);
}

/// A retransmission runs in softirq, which can interrupt a `bpf()` map call on its CPU: the
/// agent reads its counters that way. A classic tracepoint's program is skipped then (the map
/// call holds `bpf_prog_active`), uncounted; a BTF tracepoint's is not. Two threads read the
/// counters without pause through the lossy phase. (With the classic tracepoints this failed
/// 3 runs in 10 here, 3 retransmits counted of 4 — as the plain test once did in CI.)
#[test]
fn retransmits_are_all_counted_while_user_space_reads_the_maps() {
    retransmits_match("retrans-busy", true, None, 10_000);
}

fn retransmits_match(netns: &str, read_maps: bool, mtu: Option<u32>, len: usize) {
    let Some(_serial) = kernel_test("retransmits") else {
        return;
    };
    const PORT: u16 = 7105;
    let ns = NetNs::new(netns);
    if let Some(mtu) = mtu {
        ns.ip(&["link", "set", "lo", "mtu", &mtu.to_string()]);
    }
    let _in = ns.enter();
    let probe = Harness::start(&Harness::for_dport(PORT));
    assert_eq!(probe.probe.tracepoint_kind(), TracepointKind::Btf);
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
    let sport = client.local_addr().unwrap().port();
    let (mut server_side, _) = listener.accept().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..if read_maps { 2 } else { 0 })
        .map(|_| {
            let counters = probe.probe.counter_reader();
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    counters.read().unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    // Lose the client's data segments on arrival for a while (a drop at the output hook would
    // fail the send locally, which TCP does not count as a retransmission): the kernel
    // retransmits them on its RTO (≥ 200 ms).
    ns.nft(&format!(
        "table inet lossy {{\n chain in {{\n type filter hook input priority 0;\n tcp dport {PORT} meta length > 100 drop\n }}\n}}\n"
    ));
    // From a thread: a write larger than the send buffer waits for the peer's ACKs.
    let mut writer = client.try_clone().unwrap();
    let writer = thread::spawn(move || writer.write_all(&vec![5u8; len]).unwrap());
    thread::sleep(Duration::from_millis(1_200));
    ns.nft("delete table inet lossy");
    let mut got = vec![0u8; len];
    server_side.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    let info = tcp_info(&client);
    assert!(
        info.tcpi_total_retrans >= 1,
        "the drop rule caused no retransmission"
    );
    drop(server_side);
    let _ = read_counting(&mut client);
    drop(client);

    let flow = probe.finished_flow(sport);
    // TCP also counts a retransmission it failed to send (TCPRetransFail, this netns's own);
    // NetScope counts those sent.
    let unsent = tcp_ext("TCPRetransFail");
    assert_eq!(
        flow.retransmits,
        info.tcpi_total_retrans - unsent as u32,
        "retransmits sent ({unsent} not sent): {flow:?}"
    );
    assert_eq!(flow.bytes_sent, len as u64);
}

#[test]
fn a_burst_of_20000_connections_is_seen_whole_and_counters_reconcile() {
    let Some(_serial) = kernel_test("burst") else {
        return;
    };
    const PORT: u16 = 7106;
    // Scaled down under emulation (`cargo xtask test-kernels` runs 2,000 in its guests).
    let connections: usize = std::env::var("NETSCOPE_BURST_connections")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ns = NetNs::new("burst");
    let _in = ns.enter();
    // Default options: default ring size, no filter beyond the port.
    let probe = Harness::start(&Harness::for_dport(PORT));
    connect_and_let_the_server_close(PORT, connections);
    probe.wait_for("every close", |evs| {
        evs.iter().filter(|s| s.kind == EventKind::Closed).count() >= connections
    });
    let (events, counters, delivered) = probe.finish();
    let established = events
        .iter()
        .filter(|s| s.kind == EventKind::Established)
        .count();
    let closed = events
        .iter()
        .filter(|s| s.kind == EventKind::Closed)
        .count();
    assert_eq!(established, connections);
    assert_eq!(closed, connections);
    assert_eq!(counters.get(counter::CONNECTS_TRACKED), connections as u64);
    assert_eq!(counters.dropped(), 0, "ring drops with the default size");
    assert_eq!(counters.get(counter::SOCK_TABLE_FULL), 0);
    assert_eq!(counters.get(counter::READ_ERRORS), 0);
    assert_eq!(
        counters.emitted(),
        delivered,
        "kernel emitted = user delivered"
    );
    assert_eq!(delivered, 2 * connections as u64);
    // Client ports are reused (the server side holds TIME_WAIT): identity is (socket, start).
    let mut ids: Vec<_> = events
        .iter()
        .filter(|s| s.kind == EventKind::Closed)
        .map(|s| s.flow.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), connections, "every connection seen exactly once");
}

#[test]
fn tc_counters_see_the_flows_packets_on_a_veth_pair() {
    let Some(_serial) = kernel_test("tc") else {
        return;
    };
    const PORT: u16 = 7107;
    // Two namespaces joined by a veth pair (benchmark-range addresses, RFC 2544).
    let client_ns = NetNs::new("tcc");
    let server_ns = NetNs::new("tcs");
    client_ns.ip(&[
        "link",
        "add",
        "vc",
        "type",
        "veth",
        "peer",
        "name",
        "vs",
        "netns",
        server_ns.name(),
    ]);
    client_ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "vc"]);
    client_ns.ip(&["link", "set", "vc", "up"]);
    server_ns.ip(&["addr", "add", "198.18.0.2/24", "dev", "vs"]);
    server_ns.ip(&["link", "set", "vs", "up"]);
    // Ground truth: nftables counts the same flow at the IP layer on the client side.
    client_ns.nft(&format!(
        "table inet truth {{
            counter out {{}}
            counter in {{}}
            chain o {{ type filter hook output priority 0; oif \"vc\" tcp dport {PORT} counter name out; }}
            chain i {{ type filter hook input priority 0; iif \"vc\" tcp sport {PORT} counter name in; }}
        }}"
    ));
    let _in = client_ns.enter();
    let mut options = Harness::for_dport(PORT);
    options.tc_interfaces = vec!["vc".to_owned()];
    let probe = Harness::start(&options);

    // One connection only: nft counts by port, so no refused early attempt may add packets.
    let (listening_tx, listening) = std::sync::mpsc::channel();
    let server = server_ns.spawn_in(move || {
        let listener = TcpListener::bind(("198.18.0.2", PORT)).unwrap();
        listening_tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        std::io::copy(&mut s, &mut std::io::sink()).unwrap();
        s.write_all(&[9u8; 300_000]).unwrap();
    });
    listening.recv().unwrap();
    let mut client = TcpStream::connect(("198.18.0.2", PORT)).unwrap();
    let sport = client.local_addr().unwrap().port();
    client.write_all(&[3u8; 200_000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (read, _) = read_counting(&mut client);
    assert_eq!(read, 300_000);
    drop(client);
    server.join().unwrap().unwrap();

    let flow = probe.finished_flow(sport);
    let wire = flow.wire.expect("the classifier saw the flow");
    let (out_packets, out_bytes) = client_ns.nft_counter("truth", "out");
    let (in_packets, in_bytes) = client_ns.nft_counter("truth", "in");
    let truth =
        format!("nft out {out_packets}/{out_bytes} in {in_packets}/{in_bytes}, tc {wire:?}");
    assert!(out_packets > 0 && in_packets > 0, "{truth}");
    // TC sees the same skbs as netfilter, with the 14-byte Ethernet header on top.
    assert_eq!(wire.packets_out, out_packets, "{truth}");
    assert_eq!(wire.packets_in, in_packets, "{truth}");
    assert_eq!(wire.bytes_out, out_bytes + 14 * out_packets, "{truth}");
    assert_eq!(wire.bytes_in, in_bytes + 14 * in_packets, "{truth}");
    assert!(wire.bytes_out > 200_000 && wire.bytes_in > 300_000);
}

/// A `bash` child (in the calling thread's netns) that connects to `addr:port`, sends 3 bytes and
/// exits once a line arrives on its stdin, so that it can be moved into a cgroup first.
fn spawn_connector(addr: &str, port: u16) -> std::process::Child {
    std::process::Command::new("bash")
        .args([
            "-c",
            &format!("read -r _; exec 3<>/dev/tcp/{addr}/{port}; printf abc >&3; exec 3>&-"),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn release(child: &mut std::process::Child) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
}

/// Accepts and drains `n` connections in the background.
fn sink_server(listener: TcpListener, n: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = listener.accept().unwrap();
            std::io::copy(&mut s, &mut std::io::sink()).unwrap();
        }
    })
}

#[test]
fn pid_and_cgroup_filters_track_only_the_chosen_process() {
    let Some(_serial) = kernel_test("pid-cgroup") else {
        return;
    };
    const PORT: u16 = 7109;
    let ns = NetNs::new("filters");
    let _in = ns.enter();
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    let server = sink_server(listener, 4);

    // By pid: the child is tracked, this test process is not.
    let mut child = spawn_connector("127.0.0.1", PORT);
    let mut options = Harness::for_dport(PORT);
    options.filters.tgids = vec![child.id()];
    let probe = Harness::start(&options);
    drop(TcpStream::connect(("127.0.0.1", PORT)).unwrap());
    release(&mut child);
    let events = probe.wait_for("the child's close", |evs| {
        evs.iter().any(|s| s.kind == EventKind::Closed)
    });
    let (events_after, counters, _) = probe.finish();
    assert!(events.len() <= events_after.len());
    let flows: Vec<_> = events_after
        .iter()
        .filter(|s| s.kind == EventKind::Closed)
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0].flow.pid, child.id());
    assert_eq!(flows[0].flow.comm, "bash");
    assert_eq!(flows[0].flow.bytes_sent, 3);
    assert_eq!(counters.get(counter::CONNECTS_FILTERED), 1);
    assert_eq!(counters.get(counter::CONNECTS_TRACKED), 1);

    // By cgroup (v2): only a process moved into the test's cgroup is tracked.
    let cgroup = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/unified/nstest-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&cgroup).unwrap();
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup).unwrap());
    let mut child = spawn_connector("127.0.0.1", PORT);
    std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
    let mut options = Harness::for_dport(PORT);
    options.filters.cgroup_ids = vec![cgroup_id];
    let probe = Harness::start(&options);
    drop(TcpStream::connect(("127.0.0.1", PORT)).unwrap());
    release(&mut child);
    probe.wait_for("the child's close", |evs| {
        evs.iter().any(|s| s.kind == EventKind::Closed)
    });
    let (events, counters, _) = probe.finish();
    let _ = std::fs::remove_dir(&cgroup);
    let flows: Vec<_> = events
        .iter()
        .filter(|s| s.kind == EventKind::Closed)
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0].flow.cgroup_id, cgroup_id);
    assert_eq!(flows[0].flow.pid, child.id());
    assert_eq!(counters.get(counter::CONNECTS_FILTERED), 1);
    server.join().unwrap();
}

#[test]
fn destination_filters_and_ipv6_flows() {
    destination_filters_and_ipv6(TracepointKind::Btf);
}

#[test]
fn classic_tracepoints_give_the_same_ipv4_and_ipv6_flows_and_filters() {
    destination_filters_and_ipv6(TracepointKind::Classic);
}

fn destination_filters_and_ipv6(hooks: TracepointKind) {
    let Some(_serial) = kernel_test("dst-ipv6") else {
        return;
    };
    const PORT: u16 = 7110;
    let ns = NetNs::new(match hooks {
        TracepointKind::Btf => "dst6",
        TracepointKind::Classic => "dst6-classic",
    });
    let _in = ns.enter();
    let v4 = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
    let v6 = TcpListener::bind(("::1", PORT)).unwrap();
    let server4 = sink_server(v4, 2);
    let server6 = sink_server(v6, 1);
    let mut options = ProbeOptions::default();
    options.filters.destinations =
        vec!["127.0.0.2/32".parse().unwrap(), "::1/128".parse().unwrap()];
    options.classic_tracepoints = hooks == TracepointKind::Classic;
    let probe = Harness::start(&options);
    // Where BTF gives the socket fields (every kernel of the matrix), the BTF ones load.
    assert_eq!(probe.probe.tracepoint_kind(), hooks);

    // 127.0.0.1 is outside the filter; 127.0.0.2 (also lo) and ::1 are inside.
    drop(TcpStream::connect(("127.0.0.1", PORT)).unwrap());
    let mut c4 = TcpStream::connect(("127.0.0.2", PORT)).unwrap();
    let sport4 = c4.local_addr().unwrap().port();
    c4.write_all(&[1u8; 1234]).unwrap();
    drop(c4);
    let mut c6 = TcpStream::connect(("::1", PORT)).unwrap();
    let sport6 = c6.local_addr().unwrap().port();
    c6.write_all(&[1u8; 4321]).unwrap();
    drop(c6);

    let f4 = probe.finished_flow(sport4);
    assert_eq!(f4.remote, format!("127.0.0.2:{PORT}").parse().unwrap());
    assert_eq!(f4.bytes_sent, 1234);
    let f6 = probe.finished_flow(sport6);
    assert_eq!(f6.local, format!("[::1]:{sport6}").parse().unwrap());
    assert_eq!(f6.remote, format!("[::1]:{PORT}").parse().unwrap());
    assert_eq!(f6.bytes_sent, 4321);
    assert!(f6.connect_latency_ns.is_some());
    server4.join().unwrap();
    server6.join().unwrap();
    let (_, counters, _) = probe.finish();
    assert_eq!(counters.get(counter::CONNECTS_TRACKED), 2);
    assert!(counters.get(counter::CONNECTS_FILTERED) >= 1);
}

#[test]
fn a_full_ring_counts_every_lost_event() {
    let Some(_serial) = kernel_test("full-ring") else {
        return;
    };
    const PORT: u16 = 7111;
    const CONNECTIONS: u64 = 60;
    let ns = NetNs::new("ring");
    let _in = ns.enter();
    // One page: room for ~18 events, and nobody reads until the end.
    let mut options = Harness::for_dport(PORT);
    options.ring_bytes = 4096;
    options.wakeup_bytes = 2048;
    let mut probe = netscope_agent::probe::Probe::load(&options).unwrap();
    let mut reader = probe.take_events().unwrap();
    connect_and_let_the_server_close(PORT, CONNECTIONS as usize);
    // A client socket is destroyed (its `Closed` emitted or dropped) when the server's last
    // ACK is processed, in softirq: on a loaded machine that can come well after the client
    // has let go of it (CI once detached 100 ms later with one `Closed` still to come). Wait
    // for every event to be accounted, then check exactly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && probe
            .kernel_counters()
            .map_or(0, |c| c.emitted() + c.dropped())
            < 2 * CONNECTIONS
    {
        thread::sleep(Duration::from_millis(20));
    }
    probe.detach();
    let mut delivered = 0u64;
    reader.drain(|_, _| delivered += 1);
    let counters = probe.kernel_counters().unwrap();
    assert!(
        counters.dropped() > 0,
        "a one-page ring must overflow: {counters:?}"
    );
    assert_eq!(
        counters.emitted() + counters.dropped(),
        2 * CONNECTIONS,
        "{counters:?}"
    );
    assert_eq!(delivered, counters.emitted());
}

#[test]
fn a_full_socket_table_is_counted_not_corrupted() {
    let Some(_serial) = kernel_test("full-table") else {
        return;
    };
    const PORT: u16 = 7112;
    let ns = NetNs::new("table");
    let _in = ns.enter();
    let mut options = Harness::for_dport(PORT);
    options.max_connections = 4;
    let probe = Harness::start(&options);
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    // Ten connections open at once: four fit.
    let clients: Vec<_> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", PORT)).unwrap())
        .collect();
    let servers: Vec<_> = (0..10).map(|_| listener.accept().unwrap().0).collect();
    drop(servers);
    drop(clients);
    probe.wait_for("four closes", |evs| {
        evs.iter().filter(|s| s.kind == EventKind::Closed).count() >= 4
    });
    thread::sleep(Duration::from_millis(100));
    let (events, counters, delivered) = probe.finish();
    assert_eq!(counters.get(counter::CONNECTS_TRACKED), 4, "{counters:?}");
    assert_eq!(counters.get(counter::SOCK_TABLE_FULL), 6, "{counters:?}");
    assert_eq!(
        events
            .iter()
            .filter(|s| s.kind == EventKind::Established)
            .count(),
        4
    );
    assert_eq!(
        events
            .iter()
            .filter(|s| s.kind == EventKind::Closed)
            .count(),
        4
    );
    assert_eq!(delivered, counters.emitted());
}

/// One exchange of the turn test's protocol: a 9-byte header (request length, response length,
/// close after replying), the request, then the response read whole (or to EOF when closing).
fn exchange_request(client: &mut TcpStream, up: u32, down: u32, close: bool) -> u64 {
    let mut msg = up.to_be_bytes().to_vec();
    msg.extend_from_slice(&down.to_be_bytes());
    msg.push(u8::from(close));
    msg.resize(9 + up as usize, 3);
    client.write_all(&msg).unwrap();
    msg.len() as u64
}

fn turn_server(listener: TcpListener) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        loop {
            let mut header = [0u8; 9];
            if s.read_exact(&mut header).is_err() {
                return;
            }
            let up = u32::from_be_bytes(header[..4].try_into().unwrap());
            let down = u32::from_be_bytes(header[4..8].try_into().unwrap());
            std::io::copy(&mut (&mut s).take(up.into()), &mut std::io::sink()).unwrap();
            s.write_all(&vec![5u8; down as usize]).unwrap();
            if header[8] == 1 {
                return;
            }
        }
    })
}

#[test]
fn each_exchange_on_a_kept_alive_connection_gets_its_own_bytes_even_when_asked_late() {
    use std::sync::{Arc, Mutex};

    use netscope_agent::{
        clock::{monotonic_now_ns, now_unix_ms},
        domain::{ConnectionObserver, FlowUpdateKind},
        flows::{FlowTable, TableChanges},
        probe::correlate::Correlator,
    };

    let Some(_serial) = kernel_test("turns") else {
        return;
    };
    const PORT: u16 = 7113;
    let ns = NetNs::new("turns");
    let _in = ns.enter();
    let mut probe = Harness::start(&Harness::for_dport(PORT));
    let live = probe.probe.counts_live_bytes();
    let table = Arc::new(Mutex::new(FlowTable::new(64, 60_000_000_000)));
    let correlator = Correlator::new(
        Arc::clone(&table),
        probe.probe.take_socks().unwrap(),
        Arc::new(TableChanges::default()),
        Arc::new(tokio::sync::Notify::new()),
        Duration::from_millis(100),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let server = turn_server(TcpListener::bind(("127.0.0.1", PORT)).unwrap());
    let mut client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
    let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let sport = local.port();
    let apply = |kind: EventKind, update: FlowUpdateKind| {
        let events = probe.wait_for("the flow's event", |evs| {
            evs.iter()
                .any(|s| s.kind == kind && s.flow.local.port() == sport)
        });
        let seen = events
            .into_iter()
            .find(|s| s.kind == kind && s.flow.local.port() == sport)
            .unwrap();
        table
            .lock()
            .unwrap()
            .apply(update, seen.flow, now_unix_ms() * 1_000_000);
    };
    apply(EventKind::Established, FlowUpdateKind::Established);
    let facts = |started: u64| rt.block_on(correlator.facts(local, remote, started));
    let read_n = |client: &mut TcpStream, n: u32| {
        let mut buf = vec![0u8; n as usize];
        client.read_exact(&mut buf).unwrap();
        u64::from(n)
    };

    // A: request and response; then B's request goes out *before* A's facts are asked for —
    // what happens when the HTTP client returned the connection to its pool and the next call
    // took it first.
    let a_started = monotonic_now_ns();
    let a_sent = exchange_request(&mut client, 100, 70_000, false);
    let a_read = read_n(&mut client, 70_000);
    let b_started = monotonic_now_ns();
    let b_sent = exchange_request(&mut client, 200_000, 5, false);
    let a = facts(a_started);
    let b_read = read_n(&mut client, 5);
    let b = facts(b_started);
    // C: the last exchange; the server closes after it, so its share comes from the closed
    // connection's final counters and turns.
    let c_started = monotonic_now_ns();
    let c_sent = exchange_request(&mut client, 1, 3_000, true);
    let mut c_read = Vec::new();
    client.read_to_end(&mut c_read).unwrap();
    drop(client);
    server.join().unwrap();
    apply(EventKind::Closed, FlowUpdateKind::Closed);
    let c = facts(c_started);

    let bytes = |f: &netscope_agent::domain::outcome::NetworkFacts| {
        (f.new_connection, f.bytes_sent, f.bytes_received)
    };
    if !live {
        // No live counting on this kernel: a reused connection's share is unknown, not guessed.
        assert_eq!((b.bytes_sent, b.bytes_received), (None, None), "{b:?}");
        return;
    }
    assert_eq!(bytes(&a), (Some(true), Some(a_sent), Some(a_read)), "A");
    assert_eq!(bytes(&b), (Some(false), Some(b_sent), Some(b_read)), "B");
    assert_eq!(
        bytes(&c),
        (Some(false), Some(c_sent), Some(c_read.len() as u64)),
        "C"
    );
}

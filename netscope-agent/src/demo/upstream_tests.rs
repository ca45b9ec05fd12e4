use super::*;

fn served(i: usize) -> Served {
    Served {
        method: "GET".into(),
        path: format!("/r{i}"),
        headers: Vec::new(),
        received_bytes: 0,
        sent_bytes: 0,
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
    }
}

#[test]
fn the_request_log_keeps_only_the_newest_requests() {
    let state = State::default();
    for i in 0..=SERVED_KEPT {
        state.log(served(i));
    }
    let log = state.served.lock().unwrap();
    assert_eq!(log.len(), SERVED_KEPT);
    assert_eq!(log.front().unwrap().path, "/r1", "the oldest went first");
    assert_eq!(log.back().unwrap().path, format!("/r{SERVED_KEPT}"));
}

#[test]
fn flaky_counts_are_per_path_and_bounded_in_paths() {
    let state = State::default();
    assert_eq!(
        (state.seen("/a"), state.seen("/a"), state.seen("/b")),
        (1, 2, 1)
    );
    for i in 0..PATHS_COUNTED {
        state.seen(&format!("/p{i}"));
    }
    assert!(state.per_path.lock().unwrap().len() <= PATHS_COUNTED);
    assert_eq!(behaviour(None, "/flaky/2/503?x=1", 2).0, 503);
    assert_eq!(behaviour(None, "/flaky/2/503?x=1", 3).0, 200);
}

#[test]
fn a_fault_set_overrides_every_path() {
    let fault = |f| behaviour(Some(f), "/bytes/100", 1);
    assert_eq!(fault(Fault::Status(503)), (503, 16, 0, None));
    assert_eq!(fault(Fault::Reset).3, Some("reset"));
    assert_eq!(fault(Fault::Delay(900)), (200, 2, 900, None));
    assert_eq!(behaviour(None, "/bytes/100", 1), (200, 100, 0, None));
}

#[tokio::test]
async fn dropping_it_closes_open_connections_and_a_new_one_may_take_its_address() {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = up.addr;
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    assert!(open.read(&mut buf).await.unwrap() > 0, "answered");
    drop(up);
    let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed at the drop: {read:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "refused meanwhile");
    let again = Upstream::start(addr).await.unwrap();
    assert_eq!(again.addr, addr);
    assert!(TcpStream::connect(addr).await.is_ok());
}

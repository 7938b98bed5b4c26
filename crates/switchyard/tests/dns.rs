//! `switchyard dns` against a `switchyard server`: the binary answers cluster names from the
//! API's Services, on loopback only.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use switchyard_testkit::{ChildGuard, ServerProcess};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn ask(addr: SocketAddr, name: &str) -> Option<Message> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut q = Message::new(0x5a5a, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send_to(&q.to_vec().ok()?, addr).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

#[test]
fn the_dns_binary_answers_the_kubernetes_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(binary(), dir.path(), &["--no-controllers"]).expect("server");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(binary())
        .arg("dns")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .arg("--listen")
        .arg(listen.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dns starts");
    let _dns = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(m) = ask(listen, "kubernetes.default.svc.cluster.local.") {
            if m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty() {
                break m;
            }
        }
        assert!(Instant::now() < deadline, "no answer from switchyard dns");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ips: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ips, ["10.96.0.1"]);
    let missing = ask(listen, "nope.default.svc.cluster.local.").expect("reply");
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
}

//! The built-in echo server (`switchyard echo-server --port 80 --version v1 --pod NS/NAME`), the
//! program behind the catalog's `myapp:<tag>`, `nginx` and `switchyard/echo` images.
//!
//! Every HTTP request is answered with the pod's name, namespace, IP (the local address of the
//! connection), hostname (gethostname) and version, plus the client's address (for source-IP
//! tests), one `key: value` per line; `/healthz` answers 200 `ok`. A UDP datagram on the same
//! port is answered with the same text. HTTP/1.1 keep-alive is honoured; request bodies are read
//! and ignored.
//!
//! Must never: write to stdout per request (a pod's log would grow with traffic).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// What the server reports about itself.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    pub port: u16,
    pub version: String,
    /// `namespace/name`.
    pub pod: String,
}

/// This UTS namespace's hostname (the pod's, inside a sandbox).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The answer text for a connection from `client` to `local`.
pub fn answer(config: &EchoConfig, local: IpAddr, client: SocketAddr) -> String {
    let hostname = hostname();
    format!(
        "pod: {}\nhostname: {hostname}\nip: {local}\nversion: {}\nclient: {client}\n",
        config.pod, config.version
    )
}

/// Serve HTTP and UDP on `0.0.0.0:port` until an IO error on the listeners.
pub async fn run(config: EchoConfig) -> std::io::Result<()> {
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    eprintln!(
        "echo-server: pod {} version {} listening on {addr} (tcp, udp)",
        config.pod, config.version
    );
    serve(config, listener, udp).await
}

/// Serve on given sockets (tests bind them inside a namespace).
pub async fn serve(
    config: EchoConfig,
    listener: tokio::net::TcpListener,
    udp: tokio::net::UdpSocket,
) -> std::io::Result<()> {
    let udp_config = config.clone();
    let udp_task = tokio::spawn(async move { serve_udp(udp_config, udp).await });
    let tcp = async {
        loop {
            let (stream, client) = listener.accept().await?;
            let config = config.clone();
            tokio::spawn(async move {
                let _ = serve_http(&config, stream, client).await;
            });
        }
    };
    let result: std::io::Result<()> = tcp.await;
    udp_task.abort();
    result
}

async fn serve_udp(config: EchoConfig, socket: tokio::net::UdpSocket) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (_, client) = socket.recv_from(&mut buf).await?;
        // The local address this datagram reached: the source address the kernel picks for a
        // reply to the client (no IP_PKTINFO needed).
        let local = local_addr_towards(client).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let _ = socket
            .send_to(answer(&config, local, client).as_bytes(), client)
            .await;
    }
}

fn local_addr_towards(peer: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let probe = std::net::UdpSocket::bind(bind).ok()?;
    probe.connect(peer).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

async fn serve_http(
    config: &EchoConfig,
    stream: tokio::net::TcpStream,
    client: SocketAddr,
) -> std::io::Result<()> {
    let local = stream.local_addr()?.ip();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        // Request line and headers (bounded by an idle timeout).
        let mut request_line = String::new();
        match tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut request_line))
            .await
        {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let version = parts.next().unwrap_or("HTTP/1.0").to_string();
        let mut content_length = 0usize;
        let mut keep_alive = version == "HTTP/1.1";
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
                    "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
                    _ => {}
                }
            }
        }
        if content_length > 0 {
            let mut body = (&mut reader).take(content_length as u64);
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        }
        let body = if path == "/healthz" {
            "ok\n".to_string()
        } else {
            answer(config, local, client)
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        write.write_all(head.as_bytes()).await?;
        if method != "HEAD" {
            write.write_all(body.as_bytes()).await?;
        }
        write.flush().await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp");
        let addr = listener.local_addr().expect("addr");
        let udp = tokio::net::UdpSocket::bind(addr).await.expect("bind udp");
        let config = EchoConfig {
            port: addr.port(),
            version: "v7".into(),
            pod: "default/myapp-abc".into(),
        };
        (addr, tokio::spawn(serve(config, listener, udp)))
    }

    async fn http(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn http_answers_with_pod_hostname_ip_version_and_client() {
        let (addr, server) = start().await;
        let out = http(addr, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
        let host = hostname();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).expect("body");
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "pod: default/myapp-abc");
        assert_eq!(lines[1], format!("hostname: {host}"));
        assert_eq!(lines[2], "ip: 127.0.0.1");
        assert_eq!(lines[3], "version: v7");
        assert!(lines[4].starts_with("client: 127.0.0.1:"), "{body}");
        let health = http(addr, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        server.abort();
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_with_bodies_on_one_connection() {
        let (addr, server) = start().await;
        let out = http(
            addr,
            "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        server.abort();
    }

    #[tokio::test]
    async fn udp_datagrams_get_the_same_text() {
        let (addr, server) = start().await;
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        client.send_to(b"hi", addr).await.expect("send");
        let mut buf = [0u8; 1024];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        let text = std::str::from_utf8(&buf[..n]).expect("utf8");
        assert!(text.contains("ip: 127.0.0.1\nversion: v7\n"), "{text}");
        assert!(
            text.contains(&format!("client: {}", client.local_addr().expect("addr"))),
            "{text}"
        );
        server.abort();
    }
}

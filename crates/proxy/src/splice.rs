//! Zero-copy relay of a TCP connection for the userspace backend: bytes move socket → pipe →
//! socket with `splice(2)` and never enter this process's memory. Where the kernel refuses
//! (`EINVAL`: a socket type splice does not support), the relay falls back to copying.
//!
//! Each direction has its own pipe and runs until its reader reaches end of stream, then shuts
//! the writer's sending side down (a half-close passes through, as with `copy_bidirectional`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice` call with the default pipe capacity.
const CHUNK: usize = 64 * 1024;
/// The pipe capacity asked for: fs.pipe-max-size's default, 1 MiB.
const PIPE_SIZE: usize = 1 << 20;

/// Relay `a` ⇄ `b` until both directions are done; the bytes moved each way.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (to_b, to_a) = tokio::try_join!(one_way(a, b), one_way(b, a))?;
    Ok((to_b, to_a))
}

/// Whether the kernel refused to splice these descriptors (then the relay copies).
fn unsupported(e: &io::Error) -> bool {
    use nix::errno::Errno;
    [Errno::EINVAL, Errno::ENOSYS]
        .iter()
        .any(|errno| e.raw_os_error() == Some(*errno as i32))
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // A bigger pipe moves more per splice (fewer wake-ups per megabyte); where the kernel
    // refuses (above fs.pipe-max-size for an unprivileged process) the default 64 KiB stays.
    let chunk = match fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)) {
        Ok(size) => usize::try_from(size).unwrap_or(CHUNK).max(CHUNK),
        Err(_) => CHUNK,
    };
    let mut total = 0u64;
    loop {
        let n = match fill(from, &pipe_in, chunk).await {
            Ok(n) => n,
            Err(e) if unsupported(&e) && total == 0 => return copy_one_way(from, to).await,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // End of stream: pass the half-close on.
            let _ = shutdown(to_fd(to), Shutdown::Write);
            return Ok(total);
        }
        drain(&pipe_out, to, n).await?;
        total += n as u64;
    }
}

fn to_fd(s: &TcpStream) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    s.as_raw_fd()
}

/// socket → pipe: up to `chunk` bytes (the pipe's size), 0 at end of stream.
async fn fill(from: &TcpStream, pipe_in: &OwnedFd, chunk: usize) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_io(Interest::READABLE, || {
            splice(
                from.as_fd(),
                None,
                pipe_in.as_fd(),
                None,
                chunk,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )
            .map_err(io::Error::from)
        }) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// pipe → socket: exactly `len` bytes (what the pipe holds).
async fn drain(pipe_out: &OwnedFd, to: &TcpStream, mut len: usize) -> io::Result<()> {
    while len > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(
                pipe_out.as_fd(),
                None,
                to.as_fd(),
                None,
                len,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )
            .map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The copying fallback for one direction.
async fn copy_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                let _ = shutdown(to_fd(to), Shutdown::Write);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets over loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn relays_every_byte_both_ways_and_passes_half_closes_on() {
        // client ⇄ [proxy_front | relay | proxy_back] ⇄ server
        let (mut client, proxy_front) = pair().await;
        let (proxy_back, mut server) = pair().await;
        let relay_task =
            tokio::spawn(async move { relay(&proxy_front, &proxy_back).await.expect("relay") });
        let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let download: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (up, down) = (upload.clone(), download.clone());
        let server_task = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("server read");
            server.write_all(&down).await.expect("server write");
            server.shutdown().await.expect("server shutdown");
            got
        });
        client.write_all(&up).await.expect("client write");
        client.shutdown().await.expect("client half-close");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("client read");
        assert!(
            server_task.await.expect("server") == upload,
            "upload corrupted"
        );
        assert!(got == download, "download corrupted");
        let (to_server, to_client) = relay_task.await.expect("relay task");
        assert_eq!(
            (to_server, to_client),
            (upload.len() as u64, download.len() as u64)
        );
    }
}

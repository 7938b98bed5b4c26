//! Batches of UDP datagrams (issue 6's throughput): one `recvmmsg` takes every query waiting on a
//! socket, up to [`BATCH`], each is answered into a reply buffer kept from batch to batch, and
//! one `sendmmsg` sends all the replies. That is two system calls per batch instead of two per
//! query, as Knot DNS's UDP workers do it; with many clients the socket's queue is rarely empty,
//! so batches are full exactly when the rate is high.
//!
//! This module owns only the buffers and the system calls, never a decision about a reply: which
//! bytes answer a query (or none) is the caller's. The buffers are allocated once per socket, so
//! a query answered from the reply cache costs no allocation. It never blocks on its own: the
//! caller says how to wait (the flags it passes, or waiting for readiness itself).

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

/// Datagrams taken and replies sent per system call, at most. A batch takes only what waits, so
/// a larger bound costs nothing when the queue is short; the query buffers are virtual memory
/// until a datagram that long arrives.
pub const BATCH: usize = 64;
/// A query datagram's buffer: any UDP payload fits, so none is cut short (Knot's is as large).
const DATAGRAM: usize = u16::MAX as usize;

/// The buffers of one socket's batches; see the module documentation.
pub struct UdpBatch {
    /// One buffer per datagram a `recvmmsg` may take.
    queries: Vec<Box<[u8]>>,
    /// Of the last receive: each query's length and sender.
    received: Vec<(usize, SockaddrStorage)>,
    /// Reply buffers, reused: the first `answered` hold replies not yet sent.
    replies: Vec<Vec<u8>>,
    /// Where each reply goes.
    reply_to: Vec<Option<SockaddrStorage>>,
    /// Replies waiting to be sent, from `sent` on.
    answered: usize,
    sent: usize,
    /// nix's `mmsghdr`s, prepared once; they hold raw pointers, so a batch stays on the thread
    /// that made it.
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

impl Default for UdpBatch {
    fn default() -> Self {
        Self {
            queries: (0..BATCH)
                .map(|_| vec![0; DATAGRAM].into_boxed_slice())
                .collect(),
            received: Vec::with_capacity(BATCH),
            replies: (0..BATCH).map(|_| Vec::new()).collect(),
            reply_to: Vec::with_capacity(BATCH),
            answered: 0,
            sent: 0,
            receive_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
        }
    }
}

/// The socket address nix received, as std's; `None` for a family that is not IP (never on a UDP
/// socket).
fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

impl UdpBatch {
    /// Takes up to [`BATCH`] datagrams waiting on `fd` (`flags` as `recvmmsg` takes them:
    /// `MSG_DONTWAIT` never to block, `MSG_WAITFORONE` to block for the first one only); how
    /// many. Replies of an earlier batch must have been sent ([`UdpBatch::has_unsent`]).
    pub fn receive(&mut self, fd: RawFd, flags: MsgFlags) -> io::Result<usize> {
        debug_assert!(!self.has_unsent(), "replies of the last batch are unsent");
        self.received.clear();
        self.reply_to.clear();
        self.answered = 0;
        self.sent = 0;
        let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = {
            let mut buffers = self.queries.iter_mut();
            std::array::from_fn(|_| {
                [IoSliceMut::new(
                    buffers.next().expect("one query buffer per slot"),
                )]
            })
        };
        let messages = recvmmsg(fd, &mut self.receive_headers, &mut slices, flags, None)?;
        for message in messages {
            // A datagram without an IP sender cannot be answered.
            if let Some(address) = message.address {
                self.received.push((message.bytes, address));
            }
        }
        Ok(self.received.len())
    }

    /// Answers each query of the last receive: `answer` gets the query, its sender and a reply
    /// buffer (holding an earlier batch's bytes: the answer replaces them), and says whether the
    /// buffer now holds a reply to send.
    pub fn answer(&mut self, mut answer: impl FnMut(&[u8], SocketAddr, &mut Vec<u8>) -> bool) {
        for (index, (len, address)) in self.received.iter().enumerate() {
            let Some(client) = socket_addr(address) else {
                continue;
            };
            let query = &self.queries[index][..*len];
            if answer(query, client, &mut self.replies[self.answered]) {
                self.reply_to.push(Some(*address));
                self.answered += 1;
            }
        }
    }

    /// Whether replies wait to be sent.
    pub fn has_unsent(&self) -> bool {
        self.sent < self.answered
    }

    /// Sends the replies not yet sent (`flags` as `sendmmsg` takes them) until all are or the
    /// socket would block (`WouldBlock`: call again once it is writable). A reply the kernel
    /// refuses for itself (an unreachable client) is skipped with the error, the others go on.
    pub fn send(&mut self, fd: RawFd, flags: MsgFlags) -> io::Result<()> {
        while self.has_unsent() {
            // As many slices as replies; `sendmmsg` sends one per address given.
            let slices: [[IoSlice<'_>; 1]; BATCH] = {
                let mut replies = self.replies[self.sent..].iter();
                std::array::from_fn(|_| [IoSlice::new(replies.next().map_or(&[], Vec::as_slice))])
            };
            let cmsgs: [ControlMessage<'_>; 0] = [];
            let result = sendmmsg(
                fd,
                &mut self.send_headers,
                &slices,
                &self.reply_to[self.sent..self.answered],
                cmsgs,
                flags,
            );
            match result {
                Ok(results) => self.sent += results.count().max(1),
                Err(nix::errno::Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(error) => {
                    // The first reply failed on its own; the rest are sent on the next turn.
                    self.sent += 1;
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn waiting_datagrams_are_taken_at_once_and_only_answered_ones_are_sent_back() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind server");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        for query in [&b"one"[..], b"skip", b"three"] {
            client
                .send_to(query, server.local_addr().expect("addr"))
                .expect("send");
        }
        let mut batch = UdpBatch::default();
        let fd = server.as_raw_fd();
        // Loopback delivers on send: all three wait already.
        assert_eq!(
            batch.receive(fd, MsgFlags::MSG_DONTWAIT).expect("receive"),
            3
        );
        let client_addr = client.local_addr().expect("addr");
        batch.answer(|query, from, reply| {
            assert_eq!(from, client_addr);
            reply.clear();
            reply.extend(query.iter().rev());
            query != b"skip"
        });
        assert!(batch.has_unsent());
        batch.send(fd, MsgFlags::MSG_DONTWAIT).expect("send");
        assert!(!batch.has_unsent());
        let mut buffer = [0; 16];
        for expected in [&b"eno"[..], b"eerht"] {
            let (len, _) = client.recv_from(&mut buffer).expect("reply");
            assert_eq!(&buffer[..len], expected);
        }
        let empty = batch.receive(fd, MsgFlags::MSG_DONTWAIT);
        assert_eq!(empty.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
    }
}

//! `loadBalancerSourceRanges` for the userspace backend: a classic BPF socket filter on a
//! LoadBalancer IP's listening socket that passes packets only from sources inside the ranges.
//!
//! The nftables backend drops other sources' packets before DNAT, so their clients see a
//! timeout, never a refusal and never a completed handshake (a scanner learns nothing). A
//! check after `accept` could only close a connection the kernel had already completed. The
//! kernel runs a socket's filter on every packet it delivers to the socket, a listener's SYNs
//! included (`tcp_filter` in `tcp_v4_rcv`/`tcp_v6_rcv` runs before the listen state is
//! handled; `udp_queue_rcv_one_skb` for datagrams), so a packet the filter refuses is dropped
//! exactly as nftables drops it: same outcome, same place in the flow.
//!
//! The program reads the source address from the network header (`SKF_NET_OFF`): the IPv4
//! `saddr` at byte 12, the IPv6 one at bytes 8..24 as four words. One block per range compares
//! the masked words and returns "keep" when all match; falling off the last block returns 0
//! (drop). Each block ends in its own return, so jumps stay short (classic BPF jumps are 8-bit)
//! whatever the number of ranges. A block is at most 10 instructions (an IPv6 prefix has at
//! most one partly masked word), so the kernel's limit of 4096 instructions allows 409 ranges;
//! beyond that attaching fails and the frontend reports a listen error rather than serve
//! unfiltered. Ranges of the other family are left out by the caller: a listener receives only
//! its own family.
//!
//! Only safe code: socket2 attaches the program (`SO_ATTACH_FILTER`).

use ipnet::IpNet;

/// `BPF_LD | BPF_W | BPF_ABS`: A = the 32-bit word at offset k (network byte order).
const LD_WORD: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`: A &= k.
const AND: u16 = 0x54;
/// `BPF_JMP | BPF_JEQ | BPF_K`: skip `jt` instructions if A == k, else `jf`.
const JEQ: u16 = 0x15;
/// `BPF_RET | BPF_K`: return k (bytes of the packet to keep; 0 drops it).
const RET: u16 = 0x06;
/// `SKF_NET_OFF`: offsets from here on count from the network header (linux/filter.h).
const NET_OFF: u32 = (-0x10_0000_i32) as u32;
/// Keep the whole packet.
const KEEP: u32 = u32::MAX;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Insn {
    pub(super) code: u16,
    pub(super) jt: u8,
    pub(super) jf: u8,
    pub(super) k: u32,
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The filter passing sources in `ranges` (all of one family), dropping the rest; `None` when
/// every source may pass (no ranges).
pub(super) fn program(ranges: &[IpNet]) -> Option<Vec<Insn>> {
    if ranges.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for range in ranges {
        // (offset of the word in the header, the range's bits there, the mask).
        let words: Vec<(u32, u32, u32)> = match range {
            IpNet::V4(net) => vec![(12, u32::from(net.network()), u32::from(net.netmask()))],
            IpNet::V6(net) => {
                let (addr, mask) = (net.network().octets(), net.netmask().octets());
                (0..4)
                    .map(|w| {
                        let word = |b: &[u8; 16]| {
                            u32::from_be_bytes([b[4 * w], b[4 * w + 1], b[4 * w + 2], b[4 * w + 3]])
                        };
                        (8 + 4 * w as u32, word(&addr), word(&mask))
                    })
                    .collect()
            }
        };
        // Words the prefix does not reach (mask 0) match every source.
        let words: Vec<_> = words
            .into_iter()
            .filter(|(_, _, mask)| *mask != 0)
            .collect();
        let mut block = Vec::new();
        for (offset, bits, mask) in words {
            block.push(insn(LD_WORD, 0, 0, NET_OFF + offset));
            if mask != u32::MAX {
                block.push(insn(AND, 0, 0, mask));
            }
            // On a mismatch, `jf` is patched below to skip to the next block.
            block.push(insn(JEQ, 0, 0, bits));
        }
        block.push(insn(RET, 0, 0, KEEP));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JEQ {
                // From the instruction after this one to the one after the block's return.
                ins.jf = u8::try_from(len - i - 1).expect("a block is at most 10 instructions");
            }
        }
        out.extend(block);
    }
    out.push(insn(RET, 0, 0, 0));
    Some(out)
}

/// Fits `socket` with the filter of `ranges` (removes its filter when there are none).
pub(super) fn apply(socket: &socket2::Socket, ranges: &[IpNet]) -> std::io::Result<()> {
    match program(ranges) {
        Some(program) => {
            let filter: Vec<socket2::SockFilter> = program
                .iter()
                .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
                .collect();
            socket.attach_filter(&filter)
        }
        None => match socket.detach_filter() {
            // ENOENT: there was none.
            Err(e) if e.raw_os_error() == Some(2) => Ok(()),
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Whether `source` is one the filter of `ranges` should let through.
    fn allows(ranges: &[IpNet], source: IpAddr) -> bool {
        ranges.iter().any(|r| r.contains(&source))
    }

    /// Runs `program` over a packet whose network header has `source` as its source address,
    /// as the kernel's classic BPF interpreter would for the four instructions used.
    fn run(program: &[Insn], source: IpAddr) -> u32 {
        let mut header = [0u8; 40];
        match source {
            IpAddr::V4(a) => header[12..16].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => header[8..24].copy_from_slice(&a.octets()),
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = program[pc];
            pc += 1;
            match i.code {
                LD_WORD => {
                    let at = (i.k - NET_OFF) as usize;
                    acc = u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
                }
                AND => acc &= i.k,
                JEQ => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                RET => return i.k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    fn nets(ranges: &[&str]) -> Vec<IpNet> {
        ranges.iter().map(|r| r.parse().expect("net")).collect()
    }

    #[test]
    fn the_filter_keeps_exactly_the_sources_in_the_ranges() {
        let cases: [(&[&str], &[&str]); 4] = [
            (
                &["203.0.113.0/24", "198.51.100.7/32", "10.0.0.0/9"],
                &[
                    "203.0.113.7",
                    "203.0.114.7",
                    "198.51.100.7",
                    "198.51.100.8",
                    "10.127.255.255",
                    "10.128.0.0",
                    "0.0.0.0",
                ],
            ),
            (&["0.0.0.0/0"], &["192.0.2.1", "255.255.255.255"]),
            (
                &[
                    "2001:db8:113::/64",
                    "fd00::/8",
                    "2001:db8::1/128",
                    "2001:db8:8000::/33",
                ],
                &[
                    "2001:db8:113::7",
                    "2001:db8:113:1::7",
                    "fdff:ffff::1",
                    "fe00::1",
                    "2001:db8::1",
                    "2001:db8::2",
                    "2001:db8:8000::1",
                    "2001:db8:7fff::1",
                    "::",
                ],
            ),
            (&["::/0"], &["2001:db8::9", "::1"]),
        ];
        for (ranges, sources) in cases {
            let ranges = nets(ranges);
            let program = program(&ranges).expect("ranges make a program");
            for source in sources {
                let source: IpAddr = source.parse().expect("ip");
                let kept = run(&program, source) != 0;
                assert_eq!(kept, allows(&ranges, source), "{source} with {ranges:?}");
            }
        }
    }

    #[test]
    fn without_ranges_there_is_no_filter() {
        assert_eq!(program(&[]), None);
    }

    #[test]
    fn blocks_stay_within_the_kernels_limits() {
        // The longest block: a /127, three whole words and a masked one.
        let ranges = nets(&["2001:db8::/127"; 409]);
        let program = program(&ranges).expect("a program");
        assert_eq!(program.len(), 409 * 10 + 1);
        assert!(program.len() <= 4096);
    }
}

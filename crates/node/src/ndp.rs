//! IPv6 Neighbor Discovery frames for the L2 speaker ([`l2`]): reading a Neighbor Solicitation
//! off the wire and building the Neighbor Advertisement that answers it, or announces a
//! takeover ([RFC 4861]). Pure functions over Ethernet frames: no sockets here.
//!
//! What is accepted follows RFC 4861 § 7.1.1 (hop limit 255, code 0, a valid checksum, a
//! unicast target, well-formed options) plus MetalLB's rule that a solicitation without a
//! source link-layer address is dropped: duplicate address detection probes (sent from `::`)
//! carry none, and a speaker must never claim an address that a host is trying to configure.
//!
//! The flags are MetalLB's (`internal/layer2/ndp.go`): an answer is *solicited* and does not
//! override an existing cache entry; an unsolicited advertisement after a takeover goes to all
//! nodes (`ff02::1`) with *override* set, so neighbours' entries move to this node.
//!
//! [`l2`]: crate::l2
//! [RFC 4861]: https://www.rfc-editor.org/rfc/rfc4861

use std::net::Ipv6Addr;

use pnet_datalink::MacAddr;
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, NdpOptionTypes, NeighborAdvertFlags, NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{self, Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet_packet::{MutablePacket, Packet};

/// The all-nodes multicast address, where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Neighbor Discovery messages are only valid with this hop limit (not forwarded by a router).
const HOP_LIMIT: u8 = 255;
const ETHERNET_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;
/// Neighbor Solicitation/Advertisement without options: type, code, checksum, flags, target.
const ND_MESSAGE: usize = 24;
/// One link-layer address option for Ethernet: type, length (in units of 8 bytes), the MAC.
const LINK_LAYER_OPTION: usize = 8;
const ADVERTISEMENT_FRAME: usize = ETHERNET_HEADER + IPV6_HEADER + ND_MESSAGE + LINK_LAYER_OPTION;

/// A Neighbor Solicitation worth answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Solicitation {
    /// The requester's MAC, from its source link-layer address option.
    pub requester_mac: MacAddr,
    /// The requester's IPv6 address (never `::`).
    pub requester_ip: Ipv6Addr,
    /// The address being resolved.
    pub target: Ipv6Addr,
}

/// Why an advertisement is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advertisement {
    /// The answer to `Solicitation` (solicited, no override).
    Reply(Solicitation),
    /// A takeover: to all nodes, override set.
    Unsolicited,
}

/// The solicited-node multicast address of `ip` (RFC 4291 § 2.7.1): solicitations for `ip`
/// are sent there, so an interface answering for `ip` must receive that group.
pub fn solicited_node_multicast(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address IPv6 multicast `group` is sent to (RFC 2464 § 7): `33:33` and the
/// group's last four bytes.
fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

/// Whether `ip` is a link-local unicast address (`fe80::/10`).
pub fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The Neighbor Solicitation in an Ethernet frame, if it is one and valid.
pub fn solicitation(frame: &[u8]) -> Option<Solicitation> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Ipv6 {
        return None;
    }
    let ip = Ipv6Packet::new(eth.payload())?;
    // Extension headers are not followed: solicitations carry none.
    if ip.get_version() != 6
        || ip.get_next_header() != IpNextHeaderProtocols::Icmpv6
        || ip.get_hop_limit() != HOP_LIMIT
    {
        return None;
    }
    let length = usize::from(ip.get_payload_length());
    let message = eth.payload().get(IPV6_HEADER..IPV6_HEADER + length)?;
    if length < ND_MESSAGE {
        return None;
    }
    let icmp = Icmpv6Packet::new(message)?;
    if icmp.get_icmpv6_type() != Icmpv6Types::NeighborSolicit
        || icmp.get_icmpv6_code() != Icmpv6Code(0)
        || icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination()) != icmp.get_checksum()
    {
        return None;
    }
    let ns = NeighborSolicitPacket::new(message)?;
    let target = ns.get_target_addr();
    let requester_ip = ip.get_source();
    if target.is_multicast() || requester_ip.is_unspecified() {
        return None;
    }
    let requester_mac = source_link_layer(&message[ND_MESSAGE..])?;
    Some(Solicitation {
        requester_mac,
        requester_ip,
        target,
    })
}

/// The source link-layer address among NDP `options`; `None` if absent or if any option is
/// malformed (a zero length makes the whole message invalid, RFC 4861 § 4.6).
fn source_link_layer(mut options: &[u8]) -> Option<MacAddr> {
    let mut found = None;
    while !options.is_empty() {
        let kind = *options.first()?;
        let length = usize::from(*options.get(1)?) * 8;
        if length == 0 {
            return None;
        }
        let option = options.get(..length)?;
        if kind == NdpOptionTypes::SourceLLAddr.0 && length == LINK_LAYER_OPTION {
            found = Some(MacAddr::new(
                option[2], option[3], option[4], option[5], option[6], option[7],
            ));
        }
        options = &options[length..];
    }
    found
}

/// A Neighbor Advertisement for `target` from this interface (`mac`, source address
/// `source_ip`), carrying `mac` as the target link-layer address.
pub fn advertisement(
    why: Advertisement,
    mac: MacAddr,
    source_ip: Ipv6Addr,
    target: Ipv6Addr,
) -> Vec<u8> {
    let (eth_destination, ip_destination, flags) = match why {
        Advertisement::Reply(ns) => (
            ns.requester_mac,
            ns.requester_ip,
            NeighborAdvertFlags::Solicited,
        ),
        Advertisement::Unsolicited => (
            multicast_mac(ALL_NODES),
            ALL_NODES,
            NeighborAdvertFlags::Override,
        ),
    };
    let mut buf = vec![0u8; ADVERTISEMENT_FRAME];
    let Some(mut eth) = MutableEthernetPacket::new(&mut buf) else {
        return buf;
    };
    eth.set_destination(eth_destination);
    eth.set_source(mac);
    eth.set_ethertype(EtherTypes::Ipv6);
    let Some(mut ip) = MutableIpv6Packet::new(eth.payload_mut()) else {
        return buf;
    };
    ip.set_version(6);
    ip.set_payload_length((ND_MESSAGE + LINK_LAYER_OPTION) as u16);
    ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
    ip.set_hop_limit(HOP_LIMIT);
    ip.set_source(source_ip);
    ip.set_destination(ip_destination);
    let Some(mut na) = MutableNeighborAdvertPacket::new(ip.payload_mut()) else {
        return buf;
    };
    na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
    na.set_icmpv6_code(Icmpv6Code(0));
    na.set_flags(flags);
    na.set_target_addr(target);
    let option = &mut na.packet_mut()[ND_MESSAGE..];
    option[0] = NdpOptionTypes::TargetLLAddr.0;
    option[1] = (LINK_LAYER_OPTION / 8) as u8;
    option[2..].copy_from_slice(&mac.octets());
    let checksum = Icmpv6Packet::new(na.packet())
        .map(|icmp| icmpv6::checksum(&icmp, &source_ip, &ip_destination))
        .unwrap_or_default();
    na.set_checksum(checksum);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::icmpv6::ndp::NeighborAdvertPacket;

    const CLIENT_MAC: MacAddr = MacAddr(2, 0, 0, 0, 0, 2);
    const NODE_MAC: MacAddr = MacAddr(2, 0, 0, 0, 0, 11);

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().expect("ip")
    }

    /// A solicitation as a Linux host sends it: to the target's solicited-node group, with
    /// `options` after the target address.
    fn solicitation_frame(source: Ipv6Addr, target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
        let group = solicited_node_multicast(target);
        let length = ND_MESSAGE + options.len();
        let mut buf = vec![0u8; ETHERNET_HEADER + IPV6_HEADER + length];
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("eth");
        eth.set_destination(multicast_mac(group));
        eth.set_source(CLIENT_MAC);
        eth.set_ethertype(EtherTypes::Ipv6);
        let mut ipv6 = MutableIpv6Packet::new(eth.payload_mut()).expect("ipv6");
        ipv6.set_version(6);
        ipv6.set_payload_length(length as u16);
        ipv6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ipv6.set_hop_limit(HOP_LIMIT);
        ipv6.set_source(source);
        ipv6.set_destination(group);
        let message = ipv6.payload_mut();
        message[0] = Icmpv6Types::NeighborSolicit.0;
        message[8..24].copy_from_slice(&target.octets());
        message[ND_MESSAGE..].copy_from_slice(options);
        let checksum =
            icmpv6::checksum(&Icmpv6Packet::new(message).expect("icmp"), &source, &group);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
        buf
    }

    fn source_option(mac: MacAddr) -> Vec<u8> {
        let mut o = vec![NdpOptionTypes::SourceLLAddr.0, 1];
        o.extend_from_slice(&mac.octets());
        o
    }

    #[test]
    fn solicited_node_group_keeps_the_last_24_bits() {
        assert_eq!(
            solicited_node_multicast(ip("fd00:67::1:150")),
            ip("ff02::1:ff01:150")
        );
        assert_eq!(
            multicast_mac(ip("ff02::1:ff01:150")),
            MacAddr::new(0x33, 0x33, 0xff, 0x01, 0x01, 0x50)
        );
        assert!(is_link_local(ip("fe80::1")) && !is_link_local(ip("fd00::1")));
    }

    #[test]
    fn a_linux_style_solicitation_is_read() {
        let frame = solicitation_frame(
            ip("fd00:67::2"),
            ip("fd00:67::150"),
            &source_option(CLIENT_MAC),
        );
        assert_eq!(
            solicitation(&frame),
            Some(Solicitation {
                requester_mac: CLIENT_MAC,
                requester_ip: ip("fd00:67::2"),
                target: ip("fd00:67::150"),
            })
        );
    }

    #[test]
    fn invalid_or_unanswerable_solicitations_are_dropped() {
        let source = ip("fd00:67::2");
        let target = ip("fd00:67::150");
        let good = solicitation_frame(source, target, &source_option(CLIENT_MAC));

        let dad = solicitation_frame(Ipv6Addr::UNSPECIFIED, target, &[]);
        assert_eq!(solicitation(&dad), None, "duplicate address detection");
        let no_source_mac = solicitation_frame(source, target, &[]);
        assert_eq!(solicitation(&no_source_mac), None);
        let mut zero_length = source_option(CLIENT_MAC);
        zero_length[1] = 0;
        assert_eq!(
            solicitation(&solicitation_frame(source, target, &zero_length)),
            None
        );
        let multicast_target = solicitation_frame(source, ALL_NODES, &source_option(CLIENT_MAC));
        assert_eq!(solicitation(&multicast_target), None);

        let mut routed = good.clone();
        routed[ETHERNET_HEADER + 7] = 64;
        assert_eq!(solicitation(&routed), None, "hop limit below 255");
        let mut corrupt = good.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(solicitation(&corrupt), None, "bad checksum");
        assert_eq!(solicitation(&good[..good.len() - 4]), None, "truncated");
        assert_eq!(solicitation(&[0u8; 10]), None);
    }

    fn read_advertisement(frame: &[u8]) -> (MacAddr, Ipv6Addr, Ipv6Addr, u8, Ipv6Addr, Vec<u8>) {
        let eth = EthernetPacket::new(frame).expect("eth");
        assert_eq!(eth.get_source(), NODE_MAC);
        let ipv6 = Ipv6Packet::new(eth.payload()).expect("ipv6");
        assert_eq!(ipv6.get_hop_limit(), HOP_LIMIT);
        let icmp = Icmpv6Packet::new(ipv6.payload()).expect("icmp");
        assert_eq!(
            icmpv6::checksum(&icmp, &ipv6.get_source(), &ipv6.get_destination()),
            icmp.get_checksum(),
            "a valid checksum"
        );
        let na = NeighborAdvertPacket::new(ipv6.payload()).expect("na");
        assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
        (
            eth.get_destination(),
            ipv6.get_source(),
            ipv6.get_destination(),
            na.get_flags(),
            na.get_target_addr(),
            ipv6.payload()[ND_MESSAGE..].to_vec(),
        )
    }

    #[test]
    fn a_reply_is_solicited_and_goes_back_to_the_requester() {
        let ns = Solicitation {
            requester_mac: CLIENT_MAC,
            requester_ip: ip("fd00:67::2"),
            target: ip("fd00:67::150"),
        };
        let frame = advertisement(
            Advertisement::Reply(ns),
            NODE_MAC,
            ip("fe80::11"),
            ns.target,
        );
        let (eth_to, from, to, flags, target, options) = read_advertisement(&frame);
        assert_eq!(
            (eth_to, from, to),
            (CLIENT_MAC, ip("fe80::11"), ns.requester_ip)
        );
        assert_eq!(
            flags,
            NeighborAdvertFlags::Solicited,
            "solicited, no override"
        );
        assert_eq!(target, ns.target);
        let mut expected = vec![NdpOptionTypes::TargetLLAddr.0, 1];
        expected.extend_from_slice(&NODE_MAC.octets());
        assert_eq!(options, expected, "the target link-layer address is ours");
    }

    #[test]
    fn an_unsolicited_advertisement_overrides_at_all_nodes() {
        let target = ip("fd00:67::150");
        let frame = advertisement(Advertisement::Unsolicited, NODE_MAC, ip("fe80::11"), target);
        let (eth_to, _, to, flags, got, _) = read_advertisement(&frame);
        assert_eq!(eth_to, MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
        assert_eq!(to, ALL_NODES);
        assert_eq!(
            flags,
            NeighborAdvertFlags::Override,
            "override, not solicited"
        );
        assert_eq!(got, target);
        assert_eq!(
            solicitation(&frame),
            None,
            "an advertisement is no solicitation"
        );
    }
}

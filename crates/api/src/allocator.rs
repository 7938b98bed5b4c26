//! The pure logic of the ClusterIP and NodePort allocators: address and port ranges, their
//! usable members, the order in which free members are tried, and the exact errors
//! kube-apiserver returns when a requested IP or port cannot be had. The API server keeps the
//! allocation state in its store and does the transactions; nothing here does IO.
//!
//! Behaviour follows kubernetes/kubernetes `pkg/registry/core/service/ipallocator` (a range
//! excludes the network address, and for IPv4 the broadcast address; IPv6 ranges are capped at
//! 2^16 addresses) and `pkg/registry/core/service/portallocator`, including the split of each
//! range into a lower "static" band that dynamic allocation only uses once the upper band is full
//! (KEP-3070 for IPs, KEP-3668 for NodePorts), so that users can pick well-known values from the
//! lower band (e.g. `10.96.0.10` for DNS) with little risk of collision.
//!
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/registry/core/service/ipallocator/bitmap.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/registry/core/service/portallocator/allocator.go>
//! - <https://github.com/kubernetes/enhancements/tree/master/keps/sig-network/3070-reserved-service-ip-range>
//! - <https://github.com/kubernetes/enhancements/tree/master/keps/sig-network/3668-reserved-service-nodeport-range>

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::status::FieldError;
use crate::validation::{go_string_slice, parse_cidr_sloppy, parse_ip_sloppy};

/// Why a range could not be built or a value not allocated. The `Display` texts of the
/// allocation failures are kube-apiserver's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocatorError {
    #[error("invalid CIDR address: {0}")]
    InvalidCidr(String),
    #[error("{0}")]
    InvalidPortRange(String),
    #[error("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}")]
    IpNotInRange { ip: String, range: String },
    #[error("provided IP is already allocated")]
    IpAllocated,
    #[error("provided port is not in the valid range. The range of valid ports is {range}")]
    PortNotInRange { range: String },
    #[error("provided port is already allocated")]
    PortAllocated,
    #[error("range is full")]
    Full,
}

/// splitmix64: a tiny, well-distributed generator, enough to spread allocations.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Offsets `0..size` in the order kube-apiserver's `randomScanStrategyWithOffset` tries them:
/// from a random point of the upper band `static_band..size` (wrapping), then from a random point
/// of the lower band `0..static_band`.
fn offsets(size: u64, static_band: u64, seed: u64) -> impl Iterator<Item = u64> {
    let static_band = static_band.min(size);
    let upper = size - static_band;
    let mut state = seed;
    let start_upper = if upper == 0 {
        0
    } else {
        splitmix64(&mut state) % upper
    };
    let start_lower = if static_band == 0 {
        0
    } else {
        splitmix64(&mut state) % static_band
    };
    let upper_band = (0..upper).map(move |i| static_band + (start_upper + i) % upper);
    let lower_band = (0..static_band).map(move |i| (start_lower + i) % static_band);
    upper_band.chain(lower_band)
}

/// `min(max(min, size/step), max)`, or 0 for ranges no larger than `min`
/// (`calculateRangeOffset`).
fn static_band_size(full_size: u128, min: u128, max: u128, step: u128) -> u64 {
    if full_size <= min {
        return 0;
    }
    let band = (full_size / step).clamp(min, max);
    u64::try_from(band).unwrap_or(u64::MAX)
}

/// A Service IP range (`--service-cluster-ip-range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    net: IpNet,
    /// The first usable address (network + 1) as an integer.
    base: u128,
    size: u64,
    static_band: u64,
}

/// IPv6 ranges are capped, as kube-apiserver's bitmap allocator is.
const MAX_V6_RANGE: u128 = 1 << 16;

impl IpRange {
    /// Parses a CIDR such as `10.96.0.0/12` or `fd00:10:96::/112`; host bits are masked off.
    pub fn parse(cidr: &str) -> Result<Self, AllocatorError> {
        let (ip, bits) = parse_cidr_sloppy(cidr.trim())
            .ok_or_else(|| AllocatorError::InvalidCidr(cidr.to_string()))?;
        let net =
            IpNet::new(ip, bits).map_err(|_| AllocatorError::InvalidCidr(cidr.to_string()))?;
        Ok(Self::from_net(net))
    }

    pub fn from_net(net: IpNet) -> Self {
        let net = net.trunc();
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let full: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        let usable = match net {
            // Neither the network nor the broadcast address.
            IpNet::V4(_) => full.saturating_sub(2),
            // The network (subnet-router anycast) address is never handed out.
            IpNet::V6(_) => full.min(MAX_V6_RANGE).saturating_sub(1),
        };
        let base = ip_to_u128(net.network()) + 1;
        Self {
            net,
            base,
            size: u64::try_from(usable).unwrap_or(u64::MAX),
            static_band: static_band_size(full, 16, 256, 16),
        }
    }

    /// The range as a CIDR (`10.96.0.0/12`).
    pub fn cidr(&self) -> IpNet {
        self.net
    }

    /// `IPv4` or `IPv6`, as Service `ipFamilies` name them.
    pub fn family(&self) -> &'static str {
        match self.net {
            IpNet::V4(_) => "IPv4",
            IpNet::V6(_) => "IPv6",
        }
    }

    /// The number of allocatable addresses.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many addresses at the bottom of the range are left to static (user-chosen) use before
    /// dynamic allocation falls back to them.
    pub fn static_band(&self) -> u64 {
        self.static_band.min(self.size)
    }

    /// Whether `ip` is an allocatable address of the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some()
    }

    /// The index of `ip` among the allocatable addresses (0 for network + 1).
    pub fn offset(&self, ip: IpAddr) -> Option<u64> {
        if !self.net.contains(&ip) || ip.is_ipv4() != self.net.network().is_ipv4() {
            return None;
        }
        let off = ip_to_u128(ip).checked_sub(self.base)?;
        u64::try_from(off).ok().filter(|&o| o < self.size)
    }

    /// The allocatable address at `offset`.
    pub fn ip_at(&self, offset: u64) -> Option<IpAddr> {
        (offset < self.size)
            .then(|| u128_to_ip(self.base + u128::from(offset), self.net.network().is_ipv4()))
    }

    /// The first allocatable address (network + 1), which kube-apiserver gives the `kubernetes`
    /// Service.
    pub fn first(&self) -> Option<IpAddr> {
        self.ip_at(0)
    }

    /// Network + `n` (`nth(10)` of 10.96.0.0/12 is 10.96.0.10, the conventional DNS address),
    /// if that address is allocatable.
    pub fn nth(&self, n: u64) -> Option<IpAddr> {
        n.checked_sub(1).and_then(|o| self.ip_at(o))
    }

    /// Every allocatable address exactly once, in the order dynamic allocation should try them:
    /// the upper band from a seed-dependent start, then the static band.
    pub fn candidate_order(&self, seed: u64) -> impl Iterator<Item = IpAddr> {
        let range = *self;
        offsets(self.size, self.static_band(), seed).filter_map(move |o| range.ip_at(o))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    } else {
        IpAddr::V6(n.into())
    }
}

/// A NodePort range (`--service-node-port-range`), `base..base+size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub base: u16,
    pub size: u16,
}

impl PortRange {
    /// Parses `30000-32767`, `30000+2767` (base plus offset) or a single port, as
    /// `net.ParsePortRange` does.
    pub fn parse(s: &str) -> Result<Self, AllocatorError> {
        let value = s.trim();
        if value.is_empty() {
            return Ok(Self { base: 0, size: 0 });
        }
        let num = |t: &str| -> Result<u32, AllocatorError> {
            t.parse::<u32>().map_err(|_| {
                AllocatorError::InvalidPortRange(format!(
                    "strconv.Atoi: parsing {t:?}: invalid syntax"
                ))
            })
        };
        let (low, high) = match (value.find('-'), value.find('+')) {
            (None, None) => {
                let p = num(value)?;
                (p, p)
            }
            (Some(i), None) => (num(&value[..i])?, num(&value[i + 1..])?),
            (None, Some(i)) => {
                let low = num(&value[..i])?;
                (low, low.saturating_add(num(&value[i + 1..])?))
            }
            (Some(_), Some(_)) => {
                return Err(AllocatorError::InvalidPortRange(format!(
                    "unable to parse port range: {value}"
                )))
            }
        };
        if low > 65535 || high > 65535 {
            return Err(AllocatorError::InvalidPortRange(format!(
                "the port range cannot be greater than 65535: {value}"
            )));
        }
        if high < low {
            return Err(AllocatorError::InvalidPortRange(format!(
                "end port cannot be less than start port: {value}"
            )));
        }
        let size = u16::try_from(high - low + 1).map_err(|_| {
            AllocatorError::InvalidPortRange(format!("the port range is too large: {value}"))
        })?;
        let base =
            u16::try_from(low).map_err(|_| AllocatorError::InvalidPortRange(value.to_string()))?;
        Ok(Self { base, size })
    }

    /// The last port of the range.
    pub fn last(&self) -> u16 {
        self.base.saturating_add(self.size.saturating_sub(1))
    }

    pub fn contains(&self, port: impl Into<i64>) -> bool {
        let port = port.into();
        self.size > 0 && port >= i64::from(self.base) && port <= i64::from(self.last())
    }

    /// How many ports at the bottom of the range are left to static use first
    /// (`min(max(16, size/32), 128)`).
    pub fn static_band(&self) -> u16 {
        u16::try_from(static_band_size(u128::from(self.size), 16, 128, 32))
            .unwrap_or(0)
            .min(self.size)
    }

    /// Every port exactly once, upper band first from a seed-dependent start, then the static
    /// band.
    pub fn candidate_order(&self, seed: u64) -> impl Iterator<Item = u16> {
        let base = self.base;
        offsets(u64::from(self.size), u64::from(self.static_band()), seed)
            .filter_map(move |o| u16::try_from(o).ok().and_then(|o| base.checked_add(o)))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.size == 0 {
            return Ok(());
        }
        write!(f, "{}-{}", self.base, self.last())
    }
}

/// `spec.ports[i].nodePort: Invalid value: 33333: provided port is not in the valid range. The
/// range of valid ports is 30000-32767`. Also for `spec.healthCheckNodePort`.
pub fn node_port_out_of_range_error(path: &str, port: i32, range: &PortRange) -> FieldError {
    FieldError::invalid(
        path,
        port,
        AllocatorError::PortNotInRange {
            range: range.to_string(),
        }
        .to_string(),
    )
}

/// `spec.ports[i].nodePort: Invalid value: 30080: provided port is already allocated`.
pub fn port_already_allocated_error(path: &str, port: i32) -> FieldError {
    FieldError::invalid(path, port, AllocatorError::PortAllocated.to_string())
}

/// The IP as kube-apiserver prints a parsed `net.IP` (canonical form), else as given.
fn canonical_ip(ip: &str) -> String {
    parse_ip_sloppy(ip).map_or_else(|| ip.to_string(), |a| a.to_string())
}

/// `spec.clusterIPs: Invalid value: []string{"10.0.0.1"}: failed to allocate IP 10.0.0.1: the
/// provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12`.
pub fn cluster_ip_out_of_range_error(
    cluster_ips: &[String],
    ip: &str,
    range: &IpRange,
) -> FieldError {
    let err = AllocatorError::IpNotInRange {
        ip: canonical_ip(ip),
        range: range.to_string(),
    };
    FieldError::invalid(
        "spec.clusterIPs",
        go_string_slice(cluster_ips),
        format!("failed to allocate IP {ip}: {err}"),
    )
}

/// `spec.clusterIPs: Invalid value: []string{"10.96.0.10"}: failed to allocate IP 10.96.0.10:
/// provided IP is already allocated`.
pub fn cluster_ip_already_allocated_error(cluster_ips: &[String], ip: &str) -> FieldError {
    FieldError::invalid(
        "spec.clusterIPs",
        go_string_slice(cluster_ips),
        format!(
            "failed to allocate IP {ip}: {}",
            AllocatorError::IpAllocated
        ),
    )
}

/// The message of the internal error kube-apiserver returns when no cluster IP is left
/// (`Internal error occurred: failed to allocate a serviceIP: range is full`).
pub fn cluster_ip_range_full_message() -> String {
    format!("failed to allocate a serviceIP: {}", AllocatorError::Full)
}

/// The message of the internal error kube-apiserver returns when no NodePort is left.
pub fn node_port_range_full_message() -> String {
    format!("failed to allocate a nodePort: {}", AllocatorError::Full)
}

/// The message of the internal error kube-apiserver returns when a requested health-check
/// NodePort cannot be had.
pub fn health_check_node_port_error_message(port: i32, err: &AllocatorError) -> String {
    format!("failed to allocate requested HealthCheck NodePort {port}: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().expect("test address"))
    }

    #[test]
    fn service_ranges_exclude_network_and_broadcast_addresses() {
        let r = IpRange::parse("10.96.0.0/12").expect("valid");
        assert_eq!(r.size(), (1 << 20) - 2);
        assert_eq!(r.first(), Some(v4("10.96.0.1")));
        assert_eq!(r.nth(10), Some(v4("10.96.0.10")));
        assert_eq!(r.nth(0), None);
        assert!(r.contains(v4("10.111.255.254")));
        assert!(!r.contains(v4("10.111.255.255")), "broadcast");
        assert!(!r.contains(v4("10.96.0.0")), "network");
        assert!(!r.contains(v4("10.0.0.1")));
        assert_eq!(r.offset(v4("10.96.0.1")), Some(0));
        assert_eq!(r.ip_at(r.size()), None);
        assert_eq!(r.to_string(), "10.96.0.0/12");
        assert_eq!(r.family(), "IPv4");
        assert_eq!(
            IpRange::parse("10.96.0.5/24").expect("masked").to_string(),
            "10.96.0.0/24"
        );
        assert!(IpRange::parse("10.96.0.0/33").is_err());
        assert!(IpRange::parse("nope").is_err());
    }

    #[test]
    fn ipv6_ranges_are_capped_and_keep_their_last_address() {
        let r = IpRange::parse("fd00::/64").expect("valid");
        assert_eq!(r.size(), 65535);
        let small = IpRange::parse("fd00::/120").expect("valid");
        assert_eq!(small.size(), 255);
        assert!(small.contains(IpAddr::V6("fd00::ff".parse::<Ipv6Addr>().expect("v6"))));
        assert!(!small.contains(v4("10.0.0.1")));
        assert_eq!(small.family(), "IPv6");
    }

    #[test]
    fn offsets_and_addresses_are_inverse() {
        let r = IpRange::parse("192.168.0.0/28").expect("valid");
        assert_eq!(r.size(), 14);
        for o in 0..r.size() {
            let ip = r.ip_at(o).expect("in range");
            assert_eq!(r.offset(ip), Some(o));
        }
    }

    #[test]
    fn static_bands_follow_kubernetes_formulas() {
        assert_eq!(
            IpRange::parse("10.96.0.0/12").expect("v").static_band(),
            256
        );
        assert_eq!(IpRange::parse("10.96.0.0/24").expect("v").static_band(), 16);
        assert_eq!(
            IpRange::parse("10.96.0.0/20").expect("v").static_band(),
            256
        );
        assert_eq!(
            IpRange::parse("10.96.0.0/21").expect("v").static_band(),
            128
        );
        assert_eq!(IpRange::parse("10.96.0.0/28").expect("v").static_band(), 0);
        assert_eq!(
            PortRange::parse("30000-32767").expect("v").static_band(),
            86
        );
        assert_eq!(PortRange::parse("30000-30015").expect("v").static_band(), 0);
        assert_eq!(PortRange::parse("1-65535").expect("v").static_band(), 128);
    }

    #[test]
    fn ip_candidates_visit_every_address_once_upper_band_first() {
        let r = IpRange::parse("10.96.0.0/24").expect("valid");
        for seed in [0, 1, 42, u64::MAX] {
            let order: Vec<IpAddr> = r.candidate_order(seed).collect();
            assert_eq!(order.len() as u64, r.size());
            let distinct: BTreeSet<IpAddr> = order.iter().copied().collect();
            assert_eq!(distinct.len() as u64, r.size());
            let band = r.static_band() as usize;
            assert!(order[..order.len() - band]
                .iter()
                .all(|ip| r.offset(*ip).expect("in range") >= band as u64));
            assert!(order[order.len() - band..]
                .iter()
                .all(|ip| r.offset(*ip).expect("in range") < band as u64));
        }
        let a: Vec<IpAddr> = r.candidate_order(1).take(3).collect();
        let b: Vec<IpAddr> = r.candidate_order(2).take(3).collect();
        assert_ne!(a, b, "different seeds start at different places");
    }

    #[test]
    fn port_ranges_parse_kubernetes_notations() {
        let r = PortRange::parse("30000-32767").expect("valid");
        assert_eq!(
            r,
            PortRange {
                base: 30000,
                size: 2768
            }
        );
        assert_eq!(r.to_string(), "30000-32767");
        assert_eq!(PortRange::parse("30000+2767").expect("plus"), r);
        assert_eq!(
            PortRange::parse("8080").expect("single"),
            PortRange {
                base: 8080,
                size: 1
            }
        );
        assert!(r.contains(30000) && r.contains(32767i32) && !r.contains(32768) && !r.contains(-1));
        assert_eq!(
            PortRange::parse("32767-30000")
                .expect_err("reversed")
                .to_string(),
            "end port cannot be less than start port: 32767-30000"
        );
        assert_eq!(
            PortRange::parse("30000-70000")
                .expect_err("too big")
                .to_string(),
            "the port range cannot be greater than 65535: 30000-70000"
        );
        assert!(PortRange::parse("a-b").is_err());
    }

    #[test]
    fn port_candidates_visit_every_port_once_upper_band_first() {
        let r = PortRange::parse("30000-32767").expect("valid");
        let order: Vec<u16> = r.candidate_order(7).collect();
        assert_eq!(order.len(), 2768);
        assert_eq!(order.iter().copied().collect::<BTreeSet<u16>>().len(), 2768);
        let band = usize::from(r.static_band());
        assert!(order[..order.len() - band].iter().all(|&p| p >= 30086));
        assert!(order[order.len() - band..].iter().all(|&p| p < 30086));
    }

    #[test]
    fn nodeport_outside_range_is_rejected_with_kubernetes_message() {
        let r = PortRange::parse("30000-32767").expect("valid");
        assert_eq!(
            node_port_out_of_range_error("spec.ports[0].nodePort", 33333, &r).message(),
            "spec.ports[0].nodePort: Invalid value: 33333: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        assert_eq!(
            port_already_allocated_error("spec.ports[1].nodePort", 30080).message(),
            "spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated"
        );
    }

    #[test]
    fn cluster_ip_outside_range_is_rejected_with_kubernetes_message() {
        let r = IpRange::parse("10.96.0.0/12").expect("valid");
        let ips = vec!["10.0.0.1".to_string()];
        assert_eq!(
            cluster_ip_out_of_range_error(&ips, "10.0.0.1", &r).message(),
            "spec.clusterIPs: Invalid value: []string{\"10.0.0.1\"}: failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
        );
        let taken = vec!["10.96.0.10".to_string()];
        assert_eq!(
            cluster_ip_already_allocated_error(&taken, "10.96.0.10").message(),
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.10\"}: failed to allocate IP 10.96.0.10: provided IP is already allocated"
        );
        assert_eq!(
            cluster_ip_range_full_message(),
            "failed to allocate a serviceIP: range is full"
        );
        assert_eq!(
            node_port_range_full_message(),
            "failed to allocate a nodePort: range is full"
        );
        assert_eq!(
            health_check_node_port_error_message(31000, &AllocatorError::PortAllocated),
            "failed to allocate requested HealthCheck NodePort 31000: provided port is already allocated"
        );
    }
}

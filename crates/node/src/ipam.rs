//! Pod IP allocation from the node's pod CIDR (the role of CNI's `host-local` IPAM plugin).
//!
//! The allocatable addresses are the CIDR's hosts minus the network address, the gateway (the
//! first host, on the bridge) and, for IPv4, the broadcast address. Allocations are keyed by pod
//! UID (allocating twice for one UID returns the same IP) and persisted atomically (temp file +
//! rename) in `ipam.json` **before** an IP is returned, so a restarted agent never hands out an
//! address twice. Like host-local, a round-robin cursor starts each search after the last
//! allocated address, so a just-released IP is reused last (a new pod rarely inherits the
//! connections and DNS caches pointed at an old one).
//!
//! Must never: return an IP that is allocated in the file, or lose an allocation on a crash.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every allocatable address of the CIDR is in use (retryable after a release).
    #[error("no free IP left in {cidr}")]
    Exhausted { cidr: IpNet },
    /// The CIDR has no allocatable address (e.g. a /31).
    #[error("pod CIDR {cidr} is too small to allocate pod IPs from")]
    TooSmall { cidr: IpNet },
    /// The state file was written for another CIDR (the node's podCIDR changed).
    #[error("IPAM state {path} is for CIDR {found}, not {wanted}")]
    CidrChanged {
        path: PathBuf,
        found: String,
        wanted: IpNet,
    },
    /// The state file cannot be read or parsed.
    #[error("IPAM state {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// Reading or writing the state file failed.
    #[error("IPAM state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `ipam.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    cidr: String,
    /// Pod UID → IP.
    allocations: BTreeMap<String, IpAddr>,
    /// The last address handed out: the next search starts after it.
    last: Option<IpAddr>,
}

/// The pod CIDR recorded in `path` (an `ipam.json`), if there is one.
pub fn recorded_cidr(path: &Path) -> Option<IpNet> {
    let text = std::fs::read_to_string(path).ok()?;
    let state: State = serde_json::from_str(&text).ok()?;
    state.cidr.parse().ok()
}

/// The IP allocations of one node.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    cidr: IpNet,
    state: State,
    used: HashSet<IpAddr>,
    /// Offsets (from the network address) of the first and last allocatable host.
    first: u128,
    last: u128,
}

impl Ipam {
    /// Open (or start) the allocations stored at `path` for `cidr`.
    pub fn open(path: &Path, cidr: IpNet) -> Result<Ipam, IpamError> {
        let cidr = cidr.trunc();
        let (first, last) = allocatable_range(cidr).ok_or(IpamError::TooSmall { cidr })?;
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
                if state.cidr.parse::<IpNet>().map(|c| c.trunc()) != Ok(cidr) {
                    return Err(IpamError::CidrChanged {
                        path: path.to_path_buf(),
                        found: state.cidr,
                        wanted: cidr,
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                cidr: cidr.to_string(),
                ..State::default()
            },
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let used = state.allocations.values().copied().collect();
        Ok(Ipam {
            path: path.to_path_buf(),
            cidr,
            state,
            used,
            first,
            last,
        })
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The gateway address of a pod CIDR: its first host (the bridge's address).
    pub fn gateway_of(cidr: IpNet) -> IpAddr {
        offset_addr(cidr.trunc(), 1)
    }

    /// The IP of `pod_uid`: the one it already has, or a newly allocated one (persisted before
    /// it is returned).
    pub fn allocate(&mut self, pod_uid: &str) -> Result<IpAddr, IpamError> {
        if let Some(ip) = self.state.allocations.get(pod_uid) {
            return Ok(*ip);
        }
        let size = self.last - self.first + 1;
        if self.used.len() as u128 >= size {
            return Err(IpamError::Exhausted { cidr: self.cidr });
        }
        // Start after the last handed-out address (round robin). The probe loop is amortised
        // O(1) while the range is not nearly full, and bounded by the used count otherwise.
        let start = match self.state.last.map(|ip| addr_offset(self.cidr, ip)) {
            Some(o) if o >= self.first && o < self.last => o + 1,
            _ => self.first,
        };
        let mut offset = start;
        let ip = loop {
            let candidate = offset_addr(self.cidr, offset);
            if !self.used.contains(&candidate) {
                break candidate;
            }
            offset = if offset >= self.last {
                self.first
            } else {
                offset + 1
            };
            if offset == start {
                return Err(IpamError::Exhausted { cidr: self.cidr });
            }
        };
        self.state.allocations.insert(pod_uid.to_string(), ip);
        let previous_last = self.state.last.replace(ip);
        if let Err(e) = self.persist() {
            self.state.allocations.remove(pod_uid);
            self.state.last = previous_last;
            return Err(e);
        }
        self.used.insert(ip);
        Ok(ip)
    }

    /// Release the IP of `pod_uid` (persisted); returns it, or `None` if it had none.
    pub fn release(&mut self, pod_uid: &str) -> Result<Option<IpAddr>, IpamError> {
        let Some(ip) = self.state.allocations.remove(pod_uid) else {
            return Ok(None);
        };
        if let Err(e) = self.persist() {
            self.state.allocations.insert(pod_uid.to_string(), ip);
            return Err(e);
        }
        self.used.remove(&ip);
        Ok(Some(ip))
    }

    /// The IP allocated to `pod_uid`, if any.
    pub fn get(&self, pod_uid: &str) -> Option<IpAddr> {
        self.state.allocations.get(pod_uid).copied()
    }

    /// Every allocation (pod UID, IP), sorted by UID.
    pub fn allocations(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.state
            .allocations
            .iter()
            .map(|(uid, ip)| (uid.as_str(), *ip))
    }

    fn persist(&self) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| IpamError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&self.path, &bytes).map_err(io)
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new contents: a temp
/// file in the same directory, fsync, rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Offsets of the first and last allocatable hosts: skip the network address and the gateway
/// (offset 1), and for IPv4 the broadcast address.
fn allocatable_range(cidr: IpNet) -> Option<(u128, u128)> {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    let size: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let last = match cidr {
        IpNet::V4(_) => size.checked_sub(2)?,
        IpNet::V6(_) => size.checked_sub(1)?,
    };
    (last >= 2).then_some((2, last))
}

fn addr_offset(cidr: IpNet, ip: IpAddr) -> u128 {
    match (cidr.network(), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => u128::from(u32::from(ip).wrapping_sub(u32::from(net))),
        (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip).wrapping_sub(u128::from(net)),
        _ => 0,
    }
}

fn offset_addr(cidr: IpNet, offset: u128) -> IpAddr {
    match cidr.network() {
        // The offset is below the CIDR's size, which fits in 32 bits for IPv4.
        IpAddr::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net).wrapping_add(offset as u32))),
        IpAddr::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net).wrapping_add(offset))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_slash_29_hands_out_its_five_pod_addresses_then_is_exhausted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam =
            Ipam::open(&dir.path().join("ipam.json"), cidr("10.1.0.0/29")).expect("open");
        let got: Vec<IpAddr> = (0..5)
            .map(|i| ipam.allocate(&format!("uid-{i}")).expect("allocate"))
            .collect();
        let want: Vec<IpAddr> = (2..=6).map(|h| ip(&format!("10.1.0.{h}"))).collect();
        assert_eq!(
            got, want,
            "network, gateway .1 and broadcast .7 are never handed out"
        );
        assert!(matches!(
            ipam.allocate("uid-5"),
            Err(IpamError::Exhausted { .. })
        ));
        assert_eq!(Ipam::gateway_of(cidr("10.1.0.0/29")), ip("10.1.0.1"));
    }

    #[test]
    fn the_same_uid_gets_the_same_ip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam =
            Ipam::open(&dir.path().join("ipam.json"), cidr("10.1.0.0/24")).expect("open");
        let a = ipam.allocate("a").expect("a");
        let _b = ipam.allocate("b").expect("b");
        assert_eq!(ipam.allocate("a").expect("a again"), a);
        assert_eq!(ipam.get("a"), Some(a));
    }

    #[test]
    fn released_ips_are_reused_last_round_robin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam =
            Ipam::open(&dir.path().join("ipam.json"), cidr("10.1.0.0/29")).expect("open");
        let a = ipam.allocate("a").expect("a"); // .2
        ipam.allocate("b").expect("b"); // .3
        assert_eq!(ipam.release("a").expect("release"), Some(a));
        assert_eq!(ipam.release("a").expect("release twice"), None);
        // The cursor moves on: .4, .5, .6 before wrapping around to the freed .2.
        let next: Vec<IpAddr> = ["c", "d", "e", "f"]
            .iter()
            .map(|u| ipam.allocate(u).expect("allocate"))
            .collect();
        assert_eq!(
            next,
            vec![ip("10.1.0.4"), ip("10.1.0.5"), ip("10.1.0.6"), a]
        );
    }

    #[test]
    fn a_reopened_ipam_never_returns_an_allocated_ip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam.json");
        let mut first: Vec<IpAddr> = Vec::new();
        {
            let mut ipam = Ipam::open(&path, cidr("10.1.0.0/28")).expect("open");
            for i in 0..6 {
                first.push(ipam.allocate(&format!("old-{i}")).expect("allocate"));
            }
            ipam.release("old-0").expect("release");
            first.remove(0);
        } // "crash": nothing but the file survives.
        let mut ipam = Ipam::open(&path, cidr("10.1.0.0/28")).expect("reopen");
        assert_eq!(ipam.get("old-3"), Some(first[2]));
        let mut fresh = HashSet::new();
        while let Ok(ip) = ipam.allocate(&format!("new-{}", fresh.len())) {
            assert!(!first.contains(&ip), "{ip} handed out twice");
            assert!(fresh.insert(ip));
        }
        // 13 allocatable in a /28 (not .0, the gateway .1, broadcast .15), 5 still held.
        assert_eq!(fresh.len(), 13 - 5);
        // And a different CIDR does not silently reuse the file.
        assert!(matches!(
            Ipam::open(&path, cidr("10.2.0.0/24")),
            Err(IpamError::CidrChanged { .. })
        ));
    }

    #[test]
    fn too_small_cidrs_are_refused_and_ipv6_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Ipam::open(&dir.path().join("a.json"), cidr("10.1.0.0/31")),
            Err(IpamError::TooSmall { .. })
        ));
        let mut v6 = Ipam::open(&dir.path().join("b.json"), cidr("fd00::/64")).expect("open");
        assert_eq!(v6.allocate("a").expect("allocate"), ip("fd00::2"));
    }
}

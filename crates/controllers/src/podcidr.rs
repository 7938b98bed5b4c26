//! Pod CIDR address management: which `spec.podCIDR`/`spec.podCIDRs` each Node gets out of the
//! cluster CIDR. This is the pure core of the node IPAM controller, modelled on Kubernetes'
//! range allocator (`pkg/controller/nodeipam/ipam/range_allocator.go` and `cidrset/cidr_set.go`):
//! the cluster CIDR (one per IP family, comma-separated for dual-stack) is cut into subnets of
//! the node mask size; [`CidrAllocator::restore`] re-registers what existing nodes already hold
//! (at startup, before anything is handed out, so one subnet never goes to two nodes),
//! [`CidrAllocator::allocate`] hands out the next free subnet per family, and
//! [`CidrAllocator::release`] frees a deleted node's subnets.
//!
//! As in `cidr_set.go` the search for a free subnet continues after the last one handed out and
//! wraps around, so a released subnet (whose routes may still linger on other nodes) is reused
//! last. Nothing here does IO; the loop ([`controller`]) writes the node, and a
//! `CIDRNotAvailable` Event when the range is full.

pub mod controller;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_api::k8s::api::core::v1::Node;

/// `--cluster-cidr` default (the flannel/kind convention).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// `--node-cidr-mask-size-ipv4` default.
pub const DEFAULT_NODE_CIDR_MASK_SIZE_IPV4: u8 = 24;
/// `--node-cidr-mask-size-ipv6` default.
pub const DEFAULT_NODE_CIDR_MASK_SIZE_IPV6: u8 = 64;
/// Reason of the Event recorded on a node when no subnet is left (`nodeutil.RecordNodeStatusChange`).
pub const EVENT_CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
/// Most bits a node mask may add to the cluster mask (`clusterSubnetMaxDiff` in cidr_set.go),
/// which bounds the allocator's table at 65536 subnets per family.
const MAX_SUBNET_BITS: u8 = 16;

/// Why the allocator could not be built or could not serve a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// An entry of the cluster CIDR list does not parse. Configuration error, not retryable.
    #[error("invalid cluster CIDR {cidr:?}: {reason}")]
    InvalidClusterCidr {
        /// The offending entry.
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node mask size does not fit the cluster CIDR. Configuration error.
    #[error(
        "node CIDR mask size /{mask} does not fit cluster CIDR {cidr} (must be /{min}../{max})"
    )]
    MaskOutOfRange {
        /// The cluster CIDR.
        cidr: IpNet,
        /// The configured node mask size.
        mask: u8,
        /// The cluster CIDR's own prefix length.
        min: u8,
        /// The family's address length in bits.
        max: u8,
    },
    /// The node mask would cut the cluster CIDR into more than 2^16 subnets
    /// (`ErrCIDRSetSubNetTooBig`). Configuration error.
    #[error("node CIDR mask size /{mask} cuts cluster CIDR {cidr} into more than 2^16 subnets")]
    TooManySubnets {
        /// The cluster CIDR.
        cidr: IpNet,
        /// The configured node mask size.
        mask: u8,
    },
    /// More than one cluster CIDR of one family, or more than two. Configuration error.
    #[error("cluster CIDRs {0:?}: at most one IPv4 and one IPv6 CIDR")]
    BadDualStack(String),
    /// Every subnet of this family is taken (`ErrCIDRRangeNoCIDRsRemaining`). Retryable once a
    /// node is deleted.
    #[error("CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range {0}")]
    Exhausted(IpNet),
    /// A node's existing pod CIDR does not parse.
    #[error("node {node:?}: invalid pod CIDR {cidr:?}")]
    InvalidPodCidr {
        /// The node.
        node: String,
        /// Its pod CIDR.
        cidr: String,
    },
    /// A node's existing pod CIDR lies outside every cluster CIDR; the node keeps it, untracked.
    #[error("node {node:?}: pod CIDR {cidr} is not in the cluster CIDR")]
    OutOfRange {
        /// The node.
        node: String,
        /// Its pod CIDR.
        cidr: IpNet,
    },
    /// A node's existing pod CIDR overlaps one already held by another node.
    #[error("node {node:?}: pod CIDR {cidr} overlaps the pod CIDR of node {holder:?}")]
    Conflict {
        /// The node being restored.
        node: String,
        /// Its pod CIDR.
        cidr: IpNet,
        /// The node already holding (part of) it.
        holder: String,
    },
}

/// The subnets of one cluster CIDR (`cidrset.CidrSet`).
#[derive(Clone, Debug)]
struct CidrSet {
    cluster: IpNet,
    mask: u8,
    /// Number of subnets (at most 2^16).
    count: usize,
    /// Subnet index → node holding it.
    used: BTreeMap<usize, String>,
    /// Where the next search starts (`nextCandidate`).
    next: usize,
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_int(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        // Subnets of an IPv4 cluster CIDR stay below 2^32.
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    }
}

impl CidrSet {
    fn new(cluster: IpNet, mask: u8) -> Result<Self, CidrError> {
        let (min, max) = (cluster.prefix_len(), cluster.max_prefix_len());
        if mask < min || mask > max {
            return Err(CidrError::MaskOutOfRange {
                cidr: cluster,
                mask,
                min,
                max,
            });
        }
        if mask - min > MAX_SUBNET_BITS {
            return Err(CidrError::TooManySubnets {
                cidr: cluster,
                mask,
            });
        }
        Ok(Self {
            cluster,
            mask,
            count: 1usize << (mask - min),
            used: BTreeMap::new(),
            next: 0,
        })
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.cluster.max_prefix_len() - self.mask)
    }

    fn subnet(&self, index: usize) -> IpNet {
        let base = to_int(self.cluster.network());
        let offset = (index as u128) << self.host_bits();
        let v6 = matches!(self.cluster, IpNet::V6(_));
        IpNet::new(from_int(v6, base + offset), self.mask)
            .expect("mask was validated against the family's length")
    }

    /// The subnet indices `net` covers (`getBeginningAndEndIndices`), or `None` when it is not
    /// inside the cluster CIDR.
    fn indices(&self, net: &IpNet) -> Option<std::ops::RangeInclusive<usize>> {
        if !self.cluster.contains(net) {
            return None;
        }
        let base = to_int(self.cluster.network());
        let first = (to_int(net.network()) - base) >> self.host_bits();
        let last = (to_int(net.broadcast()) - base) >> self.host_bits();
        // Both are below `count` (at most 2^16) because `net` lies in the cluster CIDR.
        Some(usize::try_from(first).ok()?..=usize::try_from(last).ok()?)
    }

    fn allocate_next(&mut self, node: &str) -> Result<IpNet, CidrError> {
        for step in 0..self.count {
            let candidate = (self.next + step) % self.count;
            if let std::collections::btree_map::Entry::Vacant(slot) = self.used.entry(candidate) {
                slot.insert(node.to_string());
                self.next = (candidate + 1) % self.count;
                return Ok(self.subnet(candidate));
            }
        }
        Err(CidrError::Exhausted(self.cluster))
    }
}

/// Hands out one subnet per cluster CIDR (IP family) to each node.
#[derive(Clone, Debug)]
pub struct CidrAllocator {
    sets: Vec<CidrSet>,
    /// Node → its subnets (as written to `spec.podCIDRs`) and where each sits.
    nodes: BTreeMap<String, Vec<(usize, IpNet)>>,
}

impl CidrAllocator {
    /// Parses `cluster_cidrs` ("10.244.0.0/16" or, dual-stack, "10.244.0.0/16,fd00:10:244::/56";
    /// host bits are ignored) and cuts each into subnets of its family's mask size.
    pub fn new(cluster_cidrs: &str, mask_ipv4: u8, mask_ipv6: u8) -> Result<Self, CidrError> {
        let mut sets: Vec<CidrSet> = Vec::new();
        for text in cluster_cidrs.split(',').map(str::trim) {
            let cluster: IpNet =
                text.parse()
                    .map_err(|e: ipnet::AddrParseError| CidrError::InvalidClusterCidr {
                        cidr: text.to_string(),
                        reason: e.to_string(),
                    })?;
            let cluster = cluster.trunc();
            let v6 = matches!(cluster, IpNet::V6(_));
            if sets.iter().any(|s| matches!(s.cluster, IpNet::V6(_)) == v6) {
                return Err(CidrError::BadDualStack(cluster_cidrs.to_string()));
            }
            sets.push(CidrSet::new(
                cluster,
                if v6 { mask_ipv6 } else { mask_ipv4 },
            )?);
        }
        Ok(Self {
            sets,
            nodes: BTreeMap::new(),
        })
    }

    /// The cluster CIDRs, in configuration order.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        self.sets.iter().map(|s| s.cluster).collect()
    }

    /// The subnets the allocator has recorded for `node`.
    pub fn cidrs(&self, node: &str) -> Option<Vec<IpNet>> {
        self.nodes
            .get(node)
            .map(|v| v.iter().map(|(_, n)| *n).collect())
    }

    /// The nodes holding subnets.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Registers the pod CIDRs `node` already holds (`occupyCIDRs`). All or nothing: on error
    /// nothing is recorded. Restoring what is already recorded for the node is a no-op; other
    /// CIDRs replace the node's previous record.
    pub fn restore(&mut self, node: &str, pod_cidrs: &[String]) -> Result<(), CidrError> {
        let mut claims: Vec<(usize, IpNet)> = Vec::new();
        for text in pod_cidrs {
            let net: IpNet = text.parse().map_err(|_| CidrError::InvalidPodCidr {
                node: node.to_string(),
                cidr: text.clone(),
            })?;
            let net = net.trunc();
            let Some((set, range)) = self
                .sets
                .iter()
                .enumerate()
                .find_map(|(i, s)| s.indices(&net).map(|r| (i, r)))
            else {
                return Err(CidrError::OutOfRange {
                    node: node.to_string(),
                    cidr: net,
                });
            };
            if let Some(holder) = range
                .clone()
                .filter_map(|i| self.sets[set].used.get(&i))
                .find(|holder| *holder != node)
            {
                return Err(CidrError::Conflict {
                    node: node.to_string(),
                    cidr: net,
                    holder: holder.clone(),
                });
            }
            claims.push((set, net));
        }
        if self.nodes.get(node) == Some(&claims) {
            return Ok(());
        }
        self.release(node);
        for (set, net) in &claims {
            let set = &mut self.sets[*set];
            for i in set.indices(net).into_iter().flatten() {
                set.used.insert(i, node.to_string());
            }
        }
        self.nodes.insert(node.to_string(), claims);
        Ok(())
    }

    /// The node's subnets, one per cluster CIDR, allocating them if it has none recorded
    /// (`AllocateOrOccupyCIDR`). On exhaustion of any family nothing is kept.
    pub fn allocate(&mut self, node: &str) -> Result<Vec<IpNet>, CidrError> {
        if let Some(existing) = self.cidrs(node) {
            return Ok(existing);
        }
        let mut claims: Vec<(usize, IpNet)> = Vec::new();
        for i in 0..self.sets.len() {
            match self.sets[i].allocate_next(node) {
                Ok(net) => claims.push((i, net)),
                Err(e) => {
                    for (set, net) in claims {
                        let set = &mut self.sets[set];
                        for j in set.indices(&net).into_iter().flatten() {
                            set.used.remove(&j);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let nets = claims.iter().map(|(_, n)| *n).collect();
        self.nodes.insert(node.to_string(), claims);
        Ok(nets)
    }

    /// Frees the node's subnets (node deleted). Returns whether it held any.
    pub fn release(&mut self, node: &str) -> bool {
        let Some(claims) = self.nodes.remove(node) else {
            return false;
        };
        for (set, net) in claims {
            let set = &mut self.sets[set];
            for i in set.indices(&net).into_iter().flatten() {
                if set.used.get(&i).is_some_and(|holder| holder == node) {
                    set.used.remove(&i);
                }
            }
        }
        true
    }
}

/// The pod CIDRs a node holds: `spec.podCIDRs`, else `spec.podCIDR`.
pub fn node_pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    match spec.pod_cidrs.as_deref() {
        Some(list) if !list.is_empty() => list.to_vec(),
        _ => spec
            .pod_cidr
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test fixtures are built by hand; a panic is a failed test.
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn strings(nets: &[&str]) -> Vec<String> {
        nets.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hands_out_consecutive_subnets_of_the_mask_size() {
        let mut a = CidrAllocator::new(DEFAULT_CLUSTER_CIDR, 24, 64).unwrap();
        assert_eq!(a.allocate("n1").unwrap(), vec![net("10.244.0.0/24")]);
        assert_eq!(a.allocate("n2").unwrap(), vec![net("10.244.1.0/24")]);
        assert_eq!(a.allocate("n3").unwrap(), vec![net("10.244.2.0/24")]);
        // Asking again for a node returns what it holds.
        assert_eq!(a.allocate("n2").unwrap(), vec![net("10.244.1.0/24")]);
        assert_eq!(a.cidrs("n3"), Some(vec![net("10.244.2.0/24")]));
        assert_eq!(a.nodes(), vec!["n1", "n2", "n3"]);
    }

    #[test]
    fn exhaustion_then_release_frees_the_subnet_for_a_new_node() {
        let mut a = CidrAllocator::new("10.0.0.0/24", 26, 64).unwrap();
        for n in ["a", "b", "c", "d"] {
            a.allocate(n).unwrap();
        }
        assert_eq!(
            a.allocate("e"),
            Err(CidrError::Exhausted(net("10.0.0.0/24")))
        );
        assert!(a.release("b"));
        assert!(!a.release("b"));
        assert_eq!(a.allocate("e").unwrap(), vec![net("10.0.0.64/26")]);
        assert_eq!(a.cidrs("b"), None);
    }

    #[test]
    fn released_subnet_is_reused_last() {
        let mut a = CidrAllocator::new("10.0.0.0/24", 26, 64).unwrap();
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        a.release("a");
        assert_eq!(a.allocate("c").unwrap(), vec![net("10.0.0.128/26")]);
        assert_eq!(a.allocate("d").unwrap(), vec![net("10.0.0.192/26")]);
        assert_eq!(a.allocate("e").unwrap(), vec![net("10.0.0.0/26")]);
    }

    #[test]
    fn restore_keeps_existing_subnets_out_of_later_allocations() {
        let mut a = CidrAllocator::new("10.244.0.0/16", 24, 64).unwrap();
        a.restore("old", &strings(&["10.244.0.0/24"])).unwrap();
        a.restore("older", &strings(&["10.244.2.0/24"])).unwrap();
        // Restoring the same again is a no-op.
        a.restore("old", &strings(&["10.244.0.0/24"])).unwrap();
        assert_eq!(a.allocate("new1").unwrap(), vec![net("10.244.1.0/24")]);
        assert_eq!(a.allocate("new2").unwrap(), vec![net("10.244.3.0/24")]);
        assert_eq!(a.allocate("old").unwrap(), vec![net("10.244.0.0/24")]);
    }

    #[test]
    fn restore_refuses_conflicts_and_foreign_ranges() {
        let mut a = CidrAllocator::new("10.244.0.0/16", 24, 64).unwrap();
        a.restore("a", &strings(&["10.244.5.0/24"])).unwrap();
        assert_eq!(
            a.restore("b", &strings(&["10.244.5.0/24"])),
            Err(CidrError::Conflict {
                node: "b".into(),
                cidr: net("10.244.5.0/24"),
                holder: "a".into()
            })
        );
        // A larger block overlapping a held subnet conflicts too.
        assert!(matches!(
            a.restore("b", &strings(&["10.244.4.0/23"])),
            Err(CidrError::Conflict { .. })
        ));
        assert_eq!(
            a.restore("c", &strings(&["192.168.0.0/24"])),
            Err(CidrError::OutOfRange {
                node: "c".into(),
                cidr: net("192.168.0.0/24")
            })
        );
        assert_eq!(
            a.restore("d", &strings(&["not-a-cidr"])),
            Err(CidrError::InvalidPodCidr {
                node: "d".into(),
                cidr: "not-a-cidr".into()
            })
        );
        // Nothing was recorded for the failed nodes.
        assert_eq!(a.cidrs("b"), None);
        assert_eq!(a.cidrs("c"), None);
        // A /23 restored whole blocks both its /24s.
        a.restore("e", &strings(&["10.244.0.0/23"])).unwrap();
        assert_eq!(a.allocate("f").unwrap(), vec![net("10.244.2.0/24")]);
        assert!(a.release("e"));
        assert_eq!(a.restore("g", &strings(&["10.244.1.0/24"])), Ok(()));
    }

    #[test]
    fn bad_configuration_is_an_error() {
        /// (cluster CIDR, IPv4 mask, expected error)
        type Case = (&'static str, u8, fn(&CidrError) -> bool);
        let cases: [Case; 5] = [
            ("10.244.0.0", 24, |e| {
                matches!(e, CidrError::InvalidClusterCidr { .. })
            }),
            ("10.244.0.0/16", 8, |e| {
                matches!(e, CidrError::MaskOutOfRange { .. })
            }),
            ("10.244.0.0/16", 33, |e| {
                matches!(e, CidrError::MaskOutOfRange { .. })
            }),
            ("10.0.0.0/8", 25, |e| {
                matches!(e, CidrError::TooManySubnets { .. })
            }),
            ("10.0.0.0/16,10.1.0.0/16", 24, |e| {
                matches!(e, CidrError::BadDualStack(_))
            }),
        ];
        for (cidr, mask, check) in cases {
            let err = CidrAllocator::new(cidr, mask, 64).unwrap_err();
            assert!(check(&err), "{cidr} /{mask}: {err}");
        }
    }

    #[test]
    fn host_bits_of_the_cluster_cidr_are_ignored() {
        let mut a = CidrAllocator::new("10.244.7.1/16", 24, 64).unwrap();
        assert_eq!(a.cluster_cidrs(), vec![net("10.244.0.0/16")]);
        assert_eq!(a.allocate("n").unwrap(), vec![net("10.244.0.0/24")]);
    }

    #[test]
    fn dual_stack_gives_one_subnet_per_family_and_rolls_back_on_exhaustion() {
        let mut a = CidrAllocator::new("10.244.0.0/23, fd00:10:244::/63", 24, 64).unwrap();
        assert_eq!(
            a.allocate("a").unwrap(),
            vec![net("10.244.0.0/24"), net("fd00:10:244::/64")]
        );
        a.restore("b", &strings(&["fd00:10:244:1::/64"])).unwrap();
        // IPv4 has room, IPv6 does not: nothing is kept.
        assert_eq!(
            a.allocate("c"),
            Err(CidrError::Exhausted(net("fd00:10:244::/63")))
        );
        a.release("b");
        assert_eq!(
            a.allocate("c").unwrap(),
            vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")]
        );
    }

    #[test]
    fn node_pod_cidrs_prefers_the_list() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00::/64"]}
        }))
        .unwrap();
        assert_eq!(
            node_pod_cidrs(&node),
            strings(&["10.244.0.0/24", "fd00::/64"])
        );
        let single: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.3.0/24"}
        }))
        .unwrap();
        assert_eq!(node_pod_cidrs(&single), strings(&["10.244.3.0/24"]));
        assert!(node_pod_cidrs(&Node::default()).is_empty());
    }
}

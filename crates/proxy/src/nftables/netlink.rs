//! Partial syncs without `nft`: the text of a partial transaction (the lines
//! [`super::partial_transaction`] writes) encoded as one nf_tables netlink batch and sent on a
//! `NETLINK_NETFILTER` socket of the node's namespace.
//!
//! Why: `nft -f` (1.0.6) dumps every chain of the table into its cache before it applies
//! anything, so changing one service at 10,000 services costs 0.1–1.6 s of `nft` before the
//! kernel sees the change. Full syncs stay with `nft -f` (they replace the whole table, are
//! rare, and are where nft's checks pay off). What remains is the kernel's own cost: most
//! messages take microseconds, but a batch that adds a jump, a goto (in a rule or a verdict-map
//! element) or a `dnat` makes the kernel validate the whole table when it commits (it walks
//! every chain reachable from the base chains), which is the floor of such a sync (see
//! `benches/controlplane.rs` and PERFORMANCE.md).
//!
//! The encoding is nft's own: `nft --debug=netlink -f FILE` prints the expressions nft sends
//! for a rule, and the tests load the same transactions through `nft -f` and through this module
//! into two namespaces and compare the kernel's tables expression by expression (`nft
//! --debug=netlink list table`). Rules, map keys, verdicts and set
//! declarations are read only through [`super::rule`]. Chains, sets and jump targets are named
//! (the kernel resolves names of objects created earlier in the same batch). Anonymous sets and
//! maps (`ip saddr != { … }` of `loadBalancerSourceRanges`, the `numgen inc … vmap { … }` of
//! the round-robin scheduler) and the expressions that only base chains use (`ct state`,
//! `masquerade`, `reject`) are [`Error::Unsupported`]: the caller applies that transaction
//! with `nft -f` instead.
//!
//! The batch is atomic: the kernel applies all of it or nothing. Every message asks for an
//! acknowledgement, and a rejected one is reported with the line that produced it.
//!
//! Byte orders: the kernel compares register bytes, so packet fields are in network order and
//! values that expressions compute (`numgen`, `jhash`, `fib … type`, `meta mark`) in host order.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use ipnet::IpNet;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockType};
use switchyard_netns::NetNs;

use super::rule::{
    self, AddrField, CmpOp, Key, MapRef, MarkOp, NumgenMode, Rule, SetDecl, SetRef, Term, Value,
    Verdict,
};
use super::{
    Family, FIREWALL_IPS, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, SERVICE_IPS,
    SERVICE_NODEPORTS, TABLE,
};

/// Errors of encoding or applying a partial transaction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The line is valid but this encoder does not speak it (anonymous sets and maps,
    /// base-chain expressions): apply the transaction with `nft -f`. Not an error of the data
    /// plane.
    #[error("netlink encoder does not support {line:?}: {reason}")]
    Unsupported { line: String, reason: String },
    /// The line is not one the builder writes: a bug, never retried differently.
    #[error("cannot encode {line:?}: {reason}")]
    Invalid { line: String, reason: String },
    /// The kernel rejected the batch (nothing of it was applied). Retryable by a full sync.
    #[error("kernel rejected {line:?}: {errno}")]
    Rejected {
        line: String,
        errno: nix::errno::Errno,
    },
    /// The socket failed, or the kernel's answer made no sense. Retryable.
    #[error("nf_tables netlink socket: {0}")]
    Socket(String),
}

impl Error {
    fn invalid(line: &str, reason: impl std::fmt::Display) -> Self {
        Error::Invalid {
            line: line.to_string(),
            reason: reason.to_string(),
        }
    }

    fn unsupported(line: &str, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            line: line.to_string(),
            reason: reason.into(),
        }
    }
}

// Values of linux/netlink.h, linux/netfilter/nfnetlink.h and nf_tables.h.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 0x2;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes, by object.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
/// nft's set userdata: key byte order (`NFTNL_UDATA_SET_KEYBYTEORDER`) = big endian.
const SET_USERDATA_KEY_BIG_ENDIAN: [u8; 6] = [0, 4, 2, 0, 0, 0];
/// nft's datatype numbers (`TYPE_IPADDR`, `TYPE_IP6ADDR`).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

/// The verdict register, and the 16-byte registers nft uses first (`NFT_REG_1`, `NFT_REG_2`).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_NG_INCREMENTAL: u32 = 0;
const NFT_NG_RANDOM: u32 = 1;
const NFT_HASH_JENKINS: u32 = 0;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the DNAT sets the port too.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NFTA_FIB_F_SADDR: u32 = 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `RTN_LOCAL`, the address type `fib … type local` compares with.
const RTN_LOCAL: u32 = 2;

/// An nf_tables batch: the bytes of one `sendmsg`, and the line each message came from.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    /// `lines[i]` produced the message with sequence number `first_seq + 1 + i` (the batch
    /// begin message has `first_seq`).
    lines: Vec<String>,
    first_seq: u32,
}

impl Batch {
    /// Number of messages between the batch's begin and end.
    pub fn messages(&self) -> usize {
        self.lines.len()
    }

    /// The batch's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn end_seq(&self) -> u32 {
        self.first_seq
            .wrapping_add(1)
            .wrapping_add(self.lines.len() as u32)
    }

    fn line_of(&self, seq: u32) -> Option<&str> {
        let index = seq.checked_sub(self.first_seq)?.checked_sub(1)?;
        self.lines.get(index as usize).map(String::as_str)
    }
}

/// Encodes a partial transaction; sequence numbers start at `first_seq`.
pub fn encode(transaction: &str, first_seq: u32) -> Result<Batch, Error> {
    let mut batch = Batch {
        bytes: Vec::with_capacity(transaction.len() * 2 + 64),
        lines: Vec::new(),
        first_seq,
    };
    let mut begin = Message::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    batch.bytes.extend_from_slice(begin.finish());
    let mut set_ids = 0u32;
    for line in transaction.lines().filter(|l| !l.trim().is_empty()) {
        let seq = first_seq
            .wrapping_add(1)
            .wrapping_add(batch.lines.len() as u32);
        let mut message = encode_line(line, seq, &mut set_ids)?;
        batch.bytes.extend_from_slice(message.finish());
        batch.lines.push(line.to_string());
    }
    let mut end = Message::new(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        batch.end_seq(),
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    batch.bytes.extend_from_slice(end.finish());
    Ok(batch)
}

/// The words `<verb> <object> <family> <table>` of a line, and the rest.
struct Line<'a> {
    verb: &'a str,
    object: &'a str,
    family: Family,
    rest: &'a str,
}

fn split_line(line: &str) -> Result<Line<'_>, Error> {
    let mut parts = line.splitn(5, ' ');
    let mut next = || parts.next().unwrap_or_default();
    let (verb, object, family, table, rest) = (next(), next(), next(), next(), next());
    let family = match family {
        "ip" => Family::V4,
        "ip6" => Family::V6,
        other => return Err(Error::invalid(line, format!("family {other:?}"))),
    };
    if table != TABLE {
        return Err(Error::invalid(line, format!("table {table:?}")));
    }
    Ok(Line {
        verb,
        object,
        family,
        rest,
    })
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn encode_line(line: &str, seq: u32, set_ids: &mut u32) -> Result<Message, Error> {
    let parsed = split_line(line)?;
    let family = nfproto(parsed.family);
    let nft = |op: u16, flags: u16| {
        Message::new(
            (NFNL_SUBSYS_NFTABLES << 8) | op,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family,
            0,
        )
    };
    let rest = parsed.rest;
    // (message, table attribute, name attribute) of the commands that name one object.
    let named = match (parsed.verb, parsed.object) {
        ("add", "chain") => Some((
            nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE),
            NFTA_CHAIN_TABLE,
            NFTA_CHAIN_NAME,
        )),
        ("delete", "chain") => Some((nft(NFT_MSG_DELCHAIN, 0), NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME)),
        // Flushing a chain deletes all its rules.
        ("flush", "chain") => Some((nft(NFT_MSG_DELRULE, 0), NFTA_RULE_TABLE, NFTA_RULE_CHAIN)),
        ("delete", "set") => Some((nft(NFT_MSG_DELSET, 0), NFTA_SET_TABLE, NFTA_SET_NAME)),
        _ => None,
    };
    if let Some((mut m, table_attr, name_attr)) = named {
        m.put_str(table_attr, TABLE);
        m.put_str(name_attr, name(line, rest)?);
        return Ok(m);
    }
    match (parsed.verb, parsed.object) {
        ("add", "rule") => {
            let mut m = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
            put_rule(&mut m, line, rest)?;
            Ok(m)
        }
        ("add", "set") => {
            *set_ids += 1;
            let mut m = nft(NFT_MSG_NEWSET, NLM_F_CREATE);
            put_set(&mut m, line, rest, *set_ids)?;
            Ok(m)
        }
        ("add", "element") => {
            let mut m = nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE);
            put_element(&mut m, line, parsed.family, rest, true)?;
            Ok(m)
        }
        ("delete", "element") => {
            let mut m = nft(NFT_MSG_DELSETELEM, 0);
            put_element(&mut m, line, parsed.family, rest, false)?;
            Ok(m)
        }
        _ => Err(Error::invalid(line, "not a partial-transaction command")),
    }
}

/// `<chain> <rule>` as `NFT_MSG_NEWRULE` attributes.
fn put_rule(m: &mut Message, line: &str, rest: &str) -> Result<(), Error> {
    let (chain, text) = rest
        .split_once(' ')
        .ok_or_else(|| Error::invalid(line, "a rule without terms"))?;
    let rule = Rule::parse(text).map_err(|e| Error::invalid(line, e))?;
    m.put_str(NFTA_RULE_TABLE, TABLE);
    m.put_str(NFTA_RULE_CHAIN, name(line, chain)?);
    let expressions = m.begin_nested(NFTA_RULE_EXPRESSIONS);
    encode_rule(m, &rule).map_err(|reason| match reason {
        Refusal::Unsupported(r) => Error::unsupported(line, r),
        Refusal::Invalid(r) => Error::invalid(line, r),
    })?;
    m.end_nested(expressions);
    Ok(())
}

/// `<name> { <declaration> }` as `NFT_MSG_NEWSET` attributes, as nft sends them.
fn put_set(m: &mut Message, line: &str, rest: &str, id: u32) -> Result<(), Error> {
    let (set, body) = braced(rest).ok_or_else(|| Error::invalid(line, "set without { … }"))?;
    let decl = SetDecl::parse(body).map_err(|e| Error::invalid(line, e))?;
    m.put_str(NFTA_SET_TABLE, TABLE);
    m.put_str(NFTA_SET_NAME, name(line, set)?);
    let mut flags = 0;
    if decl.timeout.is_some() {
        flags |= NFT_SET_TIMEOUT;
    }
    if decl.dynamic {
        flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
    }
    m.put_u32(NFTA_SET_FLAGS, flags);
    let (key_type, key_len) = match decl.family {
        Family::V4 => (TYPE_IPADDR, 4),
        Family::V6 => (TYPE_IP6ADDR, 16),
    };
    m.put_u32(NFTA_SET_KEY_TYPE, key_type);
    m.put_u32(NFTA_SET_KEY_LEN, key_len);
    m.put_u32(NFTA_SET_ID, id);
    if let Some(seconds) = decl.timeout {
        m.put(NFTA_SET_TIMEOUT, &(u64::from(seconds) * 1000).to_be_bytes());
    }
    m.put(NFTA_SET_USERDATA, &SET_USERDATA_KEY_BIG_ENDIAN);
    Ok(())
}

/// `<map> { <key> : <verdict> }` (added) or `<map> { <key> }` (deleted) as set element
/// attributes.
fn put_element(
    m: &mut Message,
    line: &str,
    family: Family,
    rest: &str,
    add: bool,
) -> Result<(), Error> {
    let (map, body) = braced(rest).ok_or_else(|| Error::invalid(line, "element without { … }"))?;
    let keys = map_key_types(family, map)
        .ok_or_else(|| Error::invalid(line, format!("unknown map {map:?}")))?;
    let (key, verdict) = match (add, body.split_once(" : ")) {
        (true, Some((key, verdict))) => (
            key,
            Some(Verdict::parse(verdict).map_err(|e| Error::invalid(line, e))?),
        ),
        (false, None) => (body, None),
        _ => return Err(Error::invalid(line, "element key and verdict")),
    };
    let key = Value::parse_key(key, &keys).map_err(|e| Error::invalid(line, e))?;
    let key = value_bytes(&key).map_err(|r| Error::invalid(line, r))?;
    m.put_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    m.put_str(NFTA_SET_ELEM_LIST_SET, name(line, map)?);
    let elements = m.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
    let element = m.begin_nested(NFTA_LIST_ELEM);
    let k = m.begin_nested(NFTA_SET_ELEM_KEY);
    m.put(NFTA_DATA_VALUE, &key);
    m.end_nested(k);
    if let Some(verdict) = &verdict {
        let data = m.begin_nested(NFTA_SET_ELEM_DATA);
        m.put_verdict(verdict);
        m.end_nested(data);
    }
    m.end_nested(element);
    m.end_nested(elements);
    Ok(())
}

/// `name { body }` → (name, body).
fn braced(rest: &str) -> Option<(&str, &str)> {
    let (name, body) = rest.split_once(" { ")?;
    Some((name, body.strip_suffix(" }")?))
}

/// One object name: the rest of the line, a single word.
fn name<'a>(line: &str, rest: &'a str) -> Result<&'a str, Error> {
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(Error::invalid(line, format!("name {rest:?}")));
    }
    Ok(rest)
}

/// The key types of our verdict maps (the `MAPS` declarations of [`super`]).
fn map_key_types(family: Family, map: &str) -> Option<Vec<Key>> {
    let type_ = if [SERVICE_IPS, NO_ENDPOINT_SERVICES, FIREWALL_IPS].contains(&map) {
        format!(
            "{} . inet_proto . inet_service : verdict",
            family.addr_type()
        )
    } else if [SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS].contains(&map) {
        "inet_proto . inet_service : verdict".to_string()
    } else {
        return None;
    };
    rule::map_keys(&type_).ok()
}

/// Why a rule cannot be encoded.
enum Refusal {
    Unsupported(String),
    Invalid(String),
}

fn unsupported<T>(reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Unsupported(reason.into()))
}

fn encode_rule(m: &mut Message, rule: &Rule) -> Result<(), Refusal> {
    for term in &rule.terms {
        match term {
            Term::Cmp { key, op, value } => cmp_term(m, key, *op, value)?,
            Term::Lookup { keys, set, negated } => {
                let SetRef::Named(set) = set else {
                    return unsupported("anonymous set");
                };
                load_keys(m, keys)?;
                m.expr("lookup", |m| {
                    m.put_u32(NFTA_LOOKUP_SREG, REG_1);
                    m.put_str(NFTA_LOOKUP_SET, set);
                    if *negated {
                        m.put_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                    }
                });
            }
            Term::Vmap { keys, map } => {
                let MapRef::Named(map) = map else {
                    return unsupported("anonymous verdict map");
                };
                load_keys(m, keys)?;
                m.expr("lookup", |m| {
                    m.put_u32(NFTA_LOOKUP_SREG, REG_1);
                    m.put_u32(NFTA_LOOKUP_DREG, REG_VERDICT);
                    m.put_str(NFTA_LOOKUP_SET, map);
                });
            }
            Term::UpdateSet { set, key } => {
                load(m, key, REG_1)?;
                m.expr("dynset", |m| {
                    m.put_u32(NFTA_DYNSET_SREG_KEY, REG_1);
                    m.put_u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                    m.put_str(NFTA_DYNSET_SET_NAME, set);
                });
            }
            Term::MarkSet { op, value } => {
                // mark = (mark & mask) ^ xor: `| v` keeps the other bits and sets v, `^ v`
                // flips v.
                let (mask, xor) = match op {
                    MarkOp::Or => (!value, *value),
                    MarkOp::Xor => (u32::MAX, *value),
                };
                meta_load(m, NFT_META_MARK, REG_1);
                bitwise(m, &mask.to_ne_bytes(), &xor.to_ne_bytes());
                m.expr("meta", |m| {
                    m.put_u32(NFTA_META_KEY, NFT_META_MARK);
                    m.put_u32(NFTA_META_SREG, REG_1);
                });
            }
            Term::Dnat { addr, port } => {
                let (family, bytes) = match addr {
                    IpAddr::V4(a) => (u32::from(NFPROTO_IPV4), a.octets().to_vec()),
                    IpAddr::V6(a) => (u32::from(NFPROTO_IPV6), a.octets().to_vec()),
                };
                immediate_value(m, REG_1, &bytes);
                immediate_value(m, REG_2, &port.to_be_bytes());
                m.expr("nat", |m| {
                    m.put_u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
                    m.put_u32(NFTA_NAT_FAMILY, family);
                    m.put_u32(NFTA_NAT_REG_ADDR_MIN, REG_1);
                    m.put_u32(NFTA_NAT_REG_PROTO_MIN, REG_2);
                    m.put_u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
            }
            Term::Masquerade { .. } | Term::Reject(_) => {
                return unsupported("a base-chain statement (partial syncs never write these)")
            }
            Term::Verdict(verdict) => m.expr("immediate", |m| {
                m.put_u32(NFTA_IMMEDIATE_DREG, REG_VERDICT);
                let data = m.begin_nested(NFTA_IMMEDIATE_DATA);
                m.put_verdict(verdict);
                m.end_nested(data);
            }),
        }
    }
    Ok(())
}

// Expression attributes.
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFTA_HASH_SREG: u16 = 1;
const NFTA_HASH_DREG: u16 = 2;
const NFTA_HASH_LEN: u16 = 3;
const NFTA_HASH_MODULUS: u16 = 4;
const NFTA_HASH_SEED: u16 = 5;
const NFTA_HASH_OFFSET: u16 = 6;
const NFTA_HASH_TYPE: u16 = 7;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;

/// Where an address lies in the network header, and its length.
fn addr_field(family: Family, field: AddrField) -> (u32, u32) {
    match (family, field) {
        (Family::V4, AddrField::Saddr) => (12, 4),
        (Family::V4, AddrField::Daddr) => (16, 4),
        (Family::V6, AddrField::Saddr) => (8, 16),
        (Family::V6, AddrField::Daddr) => (24, 16),
    }
}

fn payload(m: &mut Message, base: u32, offset: u32, len: u32, reg: u32) {
    m.expr("payload", |m| {
        m.put_u32(NFTA_PAYLOAD_DREG, reg);
        m.put_u32(NFTA_PAYLOAD_BASE, base);
        m.put_u32(NFTA_PAYLOAD_OFFSET, offset);
        m.put_u32(NFTA_PAYLOAD_LEN, len);
    });
}

fn meta_load(m: &mut Message, key: u32, reg: u32) {
    m.expr("meta", |m| {
        m.put_u32(NFTA_META_KEY, key);
        m.put_u32(NFTA_META_DREG, reg);
    });
}

fn cmp(m: &mut Message, op: CmpOp, data: &[u8]) {
    m.expr("cmp", |m| {
        m.put_u32(NFTA_CMP_SREG, REG_1);
        m.put_u32(
            NFTA_CMP_OP,
            match op {
                CmpOp::Eq => NFT_CMP_EQ,
                CmpOp::Ne => NFT_CMP_NEQ,
            },
        );
        let data_attr = m.begin_nested(NFTA_CMP_DATA);
        m.put(NFTA_DATA_VALUE, data);
        m.end_nested(data_attr);
    });
}

/// `reg 1 = (reg 1 & mask) ^ xor`.
fn bitwise(m: &mut Message, mask: &[u8], xor: &[u8]) {
    m.expr("bitwise", |m| {
        m.put_u32(NFTA_BITWISE_SREG, REG_1);
        m.put_u32(NFTA_BITWISE_DREG, REG_1);
        m.put_u32(NFTA_BITWISE_LEN, mask.len() as u32);
        let a = m.begin_nested(NFTA_BITWISE_MASK);
        m.put(NFTA_DATA_VALUE, mask);
        m.end_nested(a);
        let a = m.begin_nested(NFTA_BITWISE_XOR);
        m.put(NFTA_DATA_VALUE, xor);
        m.end_nested(a);
    });
}

fn immediate_value(m: &mut Message, reg: u32, data: &[u8]) {
    m.expr("immediate", |m| {
        m.put_u32(NFTA_IMMEDIATE_DREG, reg);
        let a = m.begin_nested(NFTA_IMMEDIATE_DATA);
        m.put(NFTA_DATA_VALUE, data);
        m.end_nested(a);
    });
}

fn l4proto_match(m: &mut Message, proto: crate::model::Protocol) {
    meta_load(m, NFT_META_L4PROTO, REG_1);
    cmp(m, CmpOp::Eq, &[proto_number(proto)]);
}

fn proto_number(proto: crate::model::Protocol) -> u8 {
    match proto {
        crate::model::Protocol::Tcp => 6,
        crate::model::Protocol::Udp => 17,
        crate::model::Protocol::Sctp => 132,
    }
}

/// Loads `key` into `reg` (a packet field or a computed value, as nft does).
fn load(m: &mut Message, key: &Key, reg: u32) -> Result<(), Refusal> {
    match key {
        Key::Addr(family, field) => {
            let (offset, len) = addr_field(*family, *field);
            payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, len, reg);
        }
        Key::L4Proto => meta_load(m, NFT_META_L4PROTO, reg),
        Key::DPort(None) => payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg),
        Key::FibSaddrType => m.expr("fib", |m| {
            m.put_u32(NFTA_FIB_FLAGS, NFTA_FIB_F_SADDR);
            m.put_u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            m.put_u32(NFTA_FIB_DREG, reg);
        }),
        Key::Mark(_) => meta_load(m, NFT_META_MARK, reg),
        Key::Numgen { mode, modulus } => m.expr("numgen", |m| {
            m.put_u32(NFTA_NG_DREG, reg);
            m.put_u32(NFTA_NG_MODULUS, *modulus);
            m.put_u32(
                NFTA_NG_TYPE,
                match mode {
                    NumgenMode::Inc => NFT_NG_INCREMENTAL,
                    NumgenMode::Random => NFT_NG_RANDOM,
                },
            );
            m.put_u32(NFTA_NG_OFFSET, 0);
        }),
        Key::Jhash {
            family,
            modulus,
            seed,
        } => {
            // The address goes to the next register, the hash to `reg` (nft's layout).
            let (offset, len) = addr_field(*family, AddrField::Saddr);
            payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, len, reg + 1);
            m.expr("hash", |m| {
                m.put_u32(NFTA_HASH_SREG, reg + 1);
                m.put_u32(NFTA_HASH_DREG, reg);
                m.put_u32(NFTA_HASH_LEN, len);
                m.put_u32(NFTA_HASH_MODULUS, *modulus);
                m.put_u32(NFTA_HASH_SEED, *seed);
                m.put_u32(NFTA_HASH_OFFSET, 0);
                m.put_u32(NFTA_HASH_TYPE, NFT_HASH_JENKINS);
            });
        }
        Key::DPort(Some(_)) | Key::CtState => {
            return unsupported(format!("{key} as a lookup key"));
        }
    }
    Ok(())
}

/// Loads a concatenation of keys from register 1 on, each field padded to 4 bytes (nft's
/// 32-bit register numbering for fields that do not start a 16-byte register).
fn load_keys(m: &mut Message, keys: &[Key]) -> Result<(), Refusal> {
    let mut word = 0u32;
    for key in keys {
        let reg = if word.is_multiple_of(4) {
            REG_1 + word / 4
        } else {
            // NFT_REG32_00 = 8
            8 + word
        };
        load(m, key, reg)?;
        word += key_words(key)?;
    }
    Ok(())
}

/// 32-bit words a key takes in a concatenation.
fn key_words(key: &Key) -> Result<u32, Refusal> {
    match key {
        Key::Addr(Family::V6, _) => Ok(4),
        Key::Addr(Family::V4, _) | Key::L4Proto | Key::DPort(None) => Ok(1),
        other => unsupported(format!("{other} in a concatenation")),
    }
}

fn cmp_term(m: &mut Message, key: &Key, op: CmpOp, value: &Value) -> Result<(), Refusal> {
    match (key, value) {
        (Key::Addr(family, field), Value::Net(net)) => {
            let (offset, len) = addr_field(*family, *field);
            let prefix = u32::from(net.prefix_len());
            let network = match net.trunc() {
                IpNet::V4(n) => n.network().octets().to_vec(),
                IpNet::V6(n) => n.network().octets().to_vec(),
            };
            if prefix % 8 == 0 && prefix > 0 {
                // A whole-byte prefix compares only its bytes.
                payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, prefix / 8, REG_1);
                cmp(m, op, &network[..(prefix / 8) as usize]);
            } else {
                payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, len, REG_1);
                let mask: Vec<u8> = (0..len)
                    .map(|i| {
                        let bits = prefix.saturating_sub(i * 8).min(8);
                        (0xffu16 << (8 - bits)) as u8
                    })
                    .collect();
                bitwise(m, &mask, &vec![0; len as usize]);
                cmp(m, op, &network);
            }
        }
        (Key::DPort(Some(proto)), Value::Port(port)) => {
            l4proto_match(m, *proto);
            payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, REG_1);
            cmp(m, op, &port.to_be_bytes());
        }
        (Key::Mark(Some(mask)), Value::Int(v)) => {
            load(m, key, REG_1)?;
            bitwise(m, &mask.to_ne_bytes(), &[0; 4]);
            cmp(m, op, &v.to_ne_bytes());
        }
        (Key::CtState, _) => return unsupported("ct state (base chains only)"),
        _ => {
            load(m, key, REG_1)?;
            let data = match value {
                // Computed values are host-order words.
                Value::Int(v) => v.to_ne_bytes().to_vec(),
                Value::Local => RTN_LOCAL.to_ne_bytes().to_vec(),
                other => value_bytes(other).map_err(Refusal::Invalid)?,
            };
            cmp(m, op, &data);
        }
    }
    Ok(())
}

/// The bytes of a packet-field value; a concatenation pads each field to 4 bytes.
fn value_bytes(value: &Value) -> Result<Vec<u8>, String> {
    Ok(match value {
        Value::Addr(IpAddr::V4(a)) => a.octets().to_vec(),
        Value::Addr(IpAddr::V6(a)) => a.octets().to_vec(),
        Value::Proto(p) => vec![proto_number(*p)],
        Value::Port(p) => p.to_be_bytes().to_vec(),
        Value::Concat(values) => {
            let mut out = Vec::with_capacity(values.len() * 4);
            for v in values {
                let mut bytes = value_bytes(v)?;
                bytes.resize(bytes.len().div_ceil(4) * 4, 0);
                out.extend_from_slice(&bytes);
            }
            out
        }
        other => return Err(format!("{other} is not a packet value")),
    })
}

/// A netlink message being built: header, `nfgenmsg`, attributes.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(type_: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&type_.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Message { buf }
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf
    }

    fn put(&mut self, type_: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&type_.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let padded = self.buf.len().div_ceil(4) * 4;
        self.buf.resize(padded, 0);
    }

    fn put_u32(&mut self, type_: u16, value: u32) {
        self.put(type_, &value.to_be_bytes());
    }

    fn put_str(&mut self, type_: u16, value: &str) {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.put(type_, &data);
    }

    /// Starts a nested attribute; returns where its header is.
    fn begin_nested(&mut self, type_: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(type_ | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { … } }`.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Message)) {
        let elem = self.begin_nested(NFTA_LIST_ELEM);
        self.put_str(NFTA_EXPR_NAME, name);
        let attrs = self.begin_nested(NFTA_EXPR_DATA);
        data(self);
        self.end_nested(attrs);
        self.end_nested(elem);
    }

    /// `NFTA_DATA_VERDICT { CODE, CHAIN }`.
    fn put_verdict(&mut self, verdict: &Verdict) {
        let (code, chain) = match verdict {
            Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
            Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Return => (NFT_RETURN, None),
        };
        let at = self.begin_nested(NFTA_DATA_VERDICT);
        self.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(chain) = chain {
            self.put_str(NFTA_VERDICT_CHAIN, chain);
        }
        self.end_nested(at);
    }
}

/// A `NETLINK_NETFILTER` socket inside one namespace, reused for every partial sync of a data
/// plane.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    /// The forced buffer sizes set so far (raised for big batches).
    sndbuf: usize,
    rcvbuf: usize,
}

/// Kernel socket buffers start at this (and grow with the batch).
const MIN_BUFFER: usize = 1 << 20;
/// What the kernel's acknowledgement of one message may cost in the receive buffer (an skb
/// with the echoed header; an error echoes the whole message).
const ACK_TRUESIZE: usize = 2048;

impl Socket {
    /// Opens the socket inside `netns` (a socket stays in the namespace it was created in).
    pub fn open(netns: &NetNs) -> Result<Socket, Error> {
        let fd = netns
            .run(|| {
                let fd = socket::socket(
                    AddressFamily::Netlink,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    socket::SockProtocol::NetlinkNetFilter,
                )?;
                socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
                Ok::<_, nix::Error>(fd)
            })
            .map_err(|e| Error::Socket(e.to_string()))?
            .map_err(|e| Error::Socket(format!("open: {e}")))?;
        // The kernel handles a batch inside `sendmsg` and queues every answer before it
        // returns, so a receive never waits for work; the timeout only bounds a lost answer.
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(5, 0),
        )
        .map_err(|e| Error::Socket(format!("SO_RCVTIMEO: {e}")))?;
        let mut socket = Socket {
            fd,
            seq: 1,
            sndbuf: 0,
            rcvbuf: 0,
        };
        socket.reserve(MIN_BUFFER, MIN_BUFFER)?;
        Ok(socket)
    }

    /// Raises the buffers (SO_SNDBUFFORCE: the whole batch must fit one `sendmsg`;
    /// SO_RCVBUFFORCE: every acknowledgement must fit before we read).
    fn reserve(&mut self, sndbuf: usize, rcvbuf: usize) -> Result<(), Error> {
        if sndbuf > self.sndbuf {
            socket::setsockopt(&self.fd, sockopt::SndBufForce, &sndbuf)
                .map_err(|e| Error::Socket(format!("SO_SNDBUFFORCE: {e}")))?;
            self.sndbuf = sndbuf;
        }
        if rcvbuf > self.rcvbuf {
            socket::setsockopt(&self.fd, sockopt::RcvBufForce, &rcvbuf)
                .map_err(|e| Error::Socket(format!("SO_RCVBUFFORCE: {e}")))?;
            self.rcvbuf = rcvbuf;
        }
        Ok(())
    }

    /// Encodes `transaction` and applies it atomically. [`Error::Unsupported`] when the
    /// encoder does not speak one of its lines (nothing was sent).
    pub fn apply(&mut self, transaction: &str) -> Result<(), Error> {
        let lines = transaction.lines().count() as u32;
        if self.seq.checked_add(lines + 2).is_none() {
            self.seq = 1;
        }
        let batch = encode(transaction, self.seq)?;
        if batch.is_empty() {
            return Ok(());
        }
        // Fits: checked above (a batch never wraps, its answers are matched by range).
        self.seq += batch.messages() as u32 + 2;
        self.send(&batch)
    }

    /// Sends `batch` in one `sendmsg` and reads an answer for each of its messages.
    fn send(&mut self, batch: &Batch) -> Result<(), Error> {
        self.reserve(
            batch.len() + 4096,
            (batch.messages() * ACK_TRUESIZE).max(MIN_BUFFER),
        )?;
        let sent = socket::sendto(
            self.fd.as_raw_fd(),
            &batch.bytes,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| Error::Socket(format!("send: {e}")))?;
        if sent != batch.bytes.len() {
            return Err(Error::Socket(format!(
                "sent {sent} of {} bytes",
                batch.bytes.len()
            )));
        }
        let mut pending = batch.messages();
        let mut first_error: Option<(u32, nix::errno::Errno)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while pending > 0 {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| Error::Socket(format!("receive: {e}")))?;
            for (seq, errno) in acknowledgements(&buf[..n])? {
                if errno != 0 && (seq == batch.first_seq || seq == batch.end_seq()) {
                    // An error about the batch itself (its framing, or the commit): the kernel
                    // sends it before the answers to the messages.
                    return Err(Error::Rejected {
                        line: "(the whole batch)".into(),
                        errno: nix::errno::Errno::from_raw(-errno),
                    });
                }
                if batch.line_of(seq).is_none() {
                    continue; // a late answer to an earlier batch
                }
                pending -= 1;
                if errno != 0 && first_error.is_none_or(|(s, _)| seq < s) {
                    first_error = Some((seq, nix::errno::Errno::from_raw(-errno)));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some((seq, errno)) => Err(Error::Rejected {
                line: batch.line_of(seq).unwrap_or_default().to_string(),
                errno,
            }),
        }
    }
}

/// The `(sequence number, error)` of each `NLMSG_ERROR` in a datagram (0 = acknowledged).
fn acknowledgements(datagram: &[u8]) -> Result<Vec<(u32, i32)>, Error> {
    let bad = || Error::Socket("malformed answer from the kernel".into());
    let word = |at: usize| -> Result<[u8; 4], Error> {
        datagram
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= datagram.len() {
        let len = u32::from_ne_bytes(word(at)?) as usize;
        let type_ = u16::from_ne_bytes([datagram[at + 4], datagram[at + 5]]);
        if len < 16 || at + len > datagram.len() {
            return Err(bad());
        }
        if type_ == NLMSG_ERROR {
            // struct nlmsgerr { int error; struct nlmsghdr msg; ... }
            let error = i32::from_ne_bytes(word(at + 16)?);
            let seq = u32::from_ne_bytes(word(at + 20 + 8)?);
            out.push((seq, error));
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

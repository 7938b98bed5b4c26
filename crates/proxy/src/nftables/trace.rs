//! A packet tracer over the generated rules (test support): it reads the full transaction of a
//! [`Ruleset`] (the text `nft -f` loads) and walks the first packet of a connection through the
//! table's base chains in the kernel's order, reporting the endpoint it is DNATed to and whether
//! it is masqueraded, or DROP, REJECT, or untouched. Either family's table: `ip switchyard`
//! takes IPv4 packets, `ip6 switchyard` IPv6 ones (a packet of the other family is an error, as
//! is a rule of the table that speaks of the other family: `ip saddr` in the `ip6` table, an
//! ICMP reject, an `ipv4_addr` set).
//!
//! Every rule, map element and set declaration goes through [`super::rule`]'s strict parser, and
//! every term is evaluated, never skipped: a rule shape the tracer does not understand, a jump to
//! a missing chain, a lookup of a missing set or a NAT statement outside a NAT chain is an error,
//! so the packet-flow tables ([`super::flows`]) fail rather than pass on rules nobody checked.
//!
//! The order followed (netfilter's):
//! - from a pod or from outside: prerouting (`filter` at -110, then `nat` at dstnat), then the
//!   routing decision: to one of the node's addresses → input; elsewhere → forward, then
//!   postrouting (`nat` at srcnat);
//! - from the node itself: output (`filter` at -110, then `nat` at -100), postrouting, and input
//!   when the destination is one of the node's addresses.
//!
//! Random choices (`numgen`, and `jhash`, whose kernel hash is not modelled) are explored: every
//! outcome of every draw is followed, so a trace returns every endpoint a packet can reach.
//! Dynamic sets (session affinity) start empty unless the trace is given their contents.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::flows::{Origin, Outcome, Packet};
use super::rule::{
    map_keys, AddrField, CmpOp, Key, MapRef, MarkOp, ParseError, Reject, Rule, SetDecl, SetRef,
    Term, Value, Verdict,
};
use super::{full_transaction, Family, Ruleset, TABLE};
use crate::model::Protocol;

/// Rules the tracer cannot read or evaluate.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TraceError(String);

impl From<ParseError> for TraceError {
    fn from(e: ParseError) -> Self {
        TraceError(e.to_string())
    }
}

fn error<T>(reason: impl Into<String>) -> Result<T, TraceError> {
    Err(TraceError(reason.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChainType {
    Filter,
    Nat,
}

/// A base chain's `type … hook … priority …; policy accept;`.
#[derive(Clone, Copy, Debug)]
struct Base {
    type_: ChainType,
    hook: Hook,
    priority: i32,
}

#[derive(Debug)]
struct Chain {
    base: Option<Base>,
    rules: Vec<Rule>,
}

#[derive(Debug)]
enum SetContents {
    /// Elements written in the table.
    Fixed(Vec<Value>),
    /// Filled by `update` statements as packets pass; given per trace.
    Dynamic,
}

#[derive(Debug)]
struct Set {
    family: Family,
    contents: SetContents,
}

#[derive(Debug)]
struct Map {
    keys: Vec<Key>,
    elements: Vec<(Value, Verdict)>,
}

/// One family's table, read back from a full transaction.
#[derive(Debug)]
pub(crate) struct Table {
    family: Family,
    chains: BTreeMap<String, Chain>,
    sets: BTreeMap<String, Set>,
    maps: BTreeMap<String, Map>,
    /// The node's addresses: `fib saddr type local`, and the routing decision to input.
    node_addresses: BTreeSet<IpAddr>,
}

/// The end of one path of a trace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum End {
    Endpoint {
        endpoint: SocketAddr,
        masqueraded: bool,
    },
    Drop,
    Reject,
    Untouched {
        masqueraded: bool,
    },
}

/// A packet as the rules see it, with what the rules did to it so far.
#[derive(Clone, Debug)]
struct Flow {
    saddr: IpAddr,
    daddr: IpAddr,
    protocol: Protocol,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    masqueraded: bool,
}

/// How a chain (or a base chain's evaluation) ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// Fell off the end or `return`: back to the caller (the policy, `accept`, for a base
    /// chain).
    Return,
    Accept,
    Drop,
    Reject,
}

/// What a rule does next.
#[derive(Clone, Debug)]
enum Step {
    /// Did not match, or matched without a verdict: the next rule.
    Next,
    Exit(Exit),
    Jump(String),
    Goto(String),
}

/// What one term does to the rule it is in.
enum Effect {
    Continue,
    NoMatch,
    Stop(Step),
}

/// The chain being evaluated belongs to this base chain (NAT and reject statements are only
/// valid in some).
#[derive(Clone, Copy)]
struct Stage {
    type_: ChainType,
    hook: Hook,
}

/// Chains deeper than this are a loop (the kernel's limit is 16 jumps).
const MAX_DEPTH: usize = 16;

impl Table {
    /// Reads the full transaction of `ruleset`; `node_addresses` are the node's own (of both
    /// families: a packet from the node has one of them as its source).
    pub(crate) fn load(
        ruleset: &Ruleset,
        node_addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Result<Table, TraceError> {
        let mut table = read(&full_transaction(ruleset), ruleset.family)?;
        table.node_addresses = node_addresses.into_iter().collect();
        table.check_references()?;
        table.check_families()?;
        Ok(table)
    }

    /// The dynamic affinity set of `endpoint` (the builder names it `affinity-…__ip/port`, an
    /// IPv6 address with dots for colons).
    pub(crate) fn affinity_set(&self, endpoint: SocketAddr) -> Result<String, TraceError> {
        let ip = endpoint.ip().to_string().replace(':', ".");
        let suffix = format!("__{ip}/{}", endpoint.port());
        let names: Vec<&String> = self
            .sets
            .keys()
            .filter(|n| n.starts_with("affinity-") && n.ends_with(&suffix))
            .collect();
        match names.as_slice() {
            [name] => Ok((*name).clone()),
            _ => error(format!("affinity sets of {endpoint}: {names:?}")),
        }
    }

    /// Every way `packet` can end, with `dynamic` the contents of dynamic sets.
    pub(crate) fn trace(
        &self,
        packet: &Packet,
        dynamic: &BTreeMap<String, BTreeSet<IpAddr>>,
    ) -> Result<BTreeSet<End>, TraceError> {
        if Family::of(&packet.source) != self.family
            || Family::of(&packet.destination) != self.family
        {
            return error(format!(
                "{packet:?}: not a packet of the {} table",
                self.family.nft()
            ));
        }
        let from_node = self.node_addresses.contains(&packet.source);
        if from_node != (packet.from == Origin::Node) {
            return error(format!(
                "{packet:?}: only packets from the node have a node address as source"
            ));
        }
        let tracer = Tracer {
            table: self,
            dynamic,
        };
        let flow = Flow {
            saddr: packet.source,
            daddr: packet.destination,
            protocol: packet.protocol,
            dport: packet.port,
            mark: 0,
            dnat: None,
            masqueraded: false,
        };
        let mut ends = BTreeSet::new();
        let flows = if from_node {
            let flows = tracer.hook(Hook::Output, vec![flow], &mut ends)?;
            let flows = tracer.hook(Hook::Postrouting, flows, &mut ends)?;
            let (local, remote) = self.route(flows);
            let mut flows = tracer.hook(Hook::Input, local, &mut ends)?;
            flows.extend(remote);
            flows
        } else {
            let flows = tracer.hook(Hook::Prerouting, vec![flow], &mut ends)?;
            let (local, remote) = self.route(flows);
            let mut flows = tracer.hook(Hook::Input, local, &mut ends)?;
            let remote = tracer.hook(Hook::Forward, remote, &mut ends)?;
            flows.extend(tracer.hook(Hook::Postrouting, remote, &mut ends)?);
            flows
        };
        ends.extend(flows.into_iter().map(|f| match f.dnat {
            Some(endpoint) => End::Endpoint {
                endpoint,
                masqueraded: f.masqueraded,
            },
            None => End::Untouched {
                masqueraded: f.masqueraded,
            },
        }));
        Ok(ends)
    }

    /// The routing decision: (to one of the node's addresses, elsewhere).
    fn route(&self, flows: Vec<Flow>) -> (Vec<Flow>, Vec<Flow>) {
        flows
            .into_iter()
            .partition(|f| self.node_addresses.contains(&f.daddr))
    }

    /// Every jump, goto and map verdict names a chain; every `@name` a set or map of the
    /// right kind; every map's keys are the keys it is looked up with.
    fn check_references(&self) -> Result<(), TraceError> {
        let chain = |name: &str| match self.chains.get(name) {
            Some(c) if c.base.is_none() => Ok(()),
            Some(_) => error(format!("jump or goto to base chain {name}")),
            None => error(format!("jump or goto to missing chain {name}")),
        };
        let verdict = |v: &Verdict| match v {
            Verdict::Jump(name) | Verdict::Goto(name) => chain(name),
            _ => Ok(()),
        };
        for map in self.maps.values() {
            map.elements.iter().try_for_each(|(_, v)| verdict(v))?;
        }
        for (name, c) in &self.chains {
            for rule in &c.rules {
                for term in &rule.terms {
                    match term {
                        Term::Verdict(v) => verdict(v)?,
                        Term::Vmap {
                            map: MapRef::Anonymous(arms),
                            ..
                        } => arms.iter().try_for_each(|(_, v)| verdict(v))?,
                        Term::Vmap {
                            keys,
                            map: MapRef::Named(map),
                        } => match self.maps.get(map) {
                            Some(m) if &m.keys == keys => {}
                            Some(m) => {
                                return error(format!(
                                    "{name}: map {map} of {:?} looked up with {keys:?}",
                                    m.keys
                                ))
                            }
                            None => return error(format!("{name}: missing map {map}")),
                        },
                        Term::Lookup {
                            set: SetRef::Named(set),
                            ..
                        }
                        | Term::UpdateSet { set, .. }
                            if !self.sets.contains_key(set) =>
                        {
                            return error(format!("{name}: missing set {set}"));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

impl Table {
    /// Every address match, hash, set and map of the table is of the table's family: the
    /// kernel would refuse `ip saddr` in an `ip6` table, and an IPv4 set there could never
    /// match.
    fn check_families(&self) -> Result<(), TraceError> {
        let family = self.family;
        let key_ok = |key: &Key| match key {
            Key::Addr(f, _) | Key::Jhash { family: f, .. } => *f == family,
            _ => true,
        };
        for (name, set) in &self.sets {
            if set.family != family {
                return error(format!(
                    "set {name} of {:?} in the {family:?} table",
                    set.family
                ));
            }
        }
        for (name, map) in &self.maps {
            if !map.keys.iter().all(key_ok) {
                return error(format!(
                    "map {name} keyed by {:?} in the {family:?} table",
                    map.keys
                ));
            }
        }
        for (name, chain) in &self.chains {
            for rule in &chain.rules {
                for term in &rule.terms {
                    let ok = match term {
                        Term::Cmp { key, .. } | Term::UpdateSet { key, .. } => key_ok(key),
                        Term::Lookup { keys, .. } | Term::Vmap { keys, .. } => {
                            keys.iter().all(key_ok)
                        }
                        Term::Dnat { addr, .. } => Family::of(addr) == family,
                        Term::Reject(Reject::IcmpPortUnreachable) => family == Family::V4,
                        Term::Reject(Reject::Icmpv6PortUnreachable) => family == Family::V6,
                        _ => true,
                    };
                    if !ok {
                        return error(format!("{name}: {term} in the {family:?} table"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One trace: the table and the contents of its dynamic sets.
struct Tracer<'a> {
    table: &'a Table,
    dynamic: &'a BTreeMap<String, BTreeSet<IpAddr>>,
}

impl Tracer<'_> {
    /// The base chains at `hook`, by priority, for each flow: those that survive (drops and
    /// rejects go to `ends`).
    fn hook(
        &self,
        hook: Hook,
        mut flows: Vec<Flow>,
        ends: &mut BTreeSet<End>,
    ) -> Result<Vec<Flow>, TraceError> {
        let mut bases: Vec<(&String, Base)> = self
            .table
            .chains
            .iter()
            .filter_map(|(name, c)| c.base.filter(|b| b.hook == hook).map(|b| (name, b)))
            .collect();
        bases.sort_by_key(|(_, b)| b.priority);
        for (name, base) in bases {
            let stage = Stage {
                type_: base.type_,
                hook,
            };
            let mut next = Vec::new();
            for flow in flows {
                for (flow, exit) in self.chain(name, flow, stage, 0)? {
                    match exit {
                        Exit::Return | Exit::Accept => next.push(flow),
                        Exit::Drop => {
                            ends.insert(End::Drop);
                        }
                        Exit::Reject => {
                            ends.insert(End::Reject);
                        }
                    }
                }
            }
            flows = next;
        }
        Ok(flows)
    }

    fn chain(
        &self,
        name: &str,
        flow: Flow,
        stage: Stage,
        depth: usize,
    ) -> Result<Vec<(Flow, Exit)>, TraceError> {
        if depth > MAX_DEPTH {
            return error(format!("chains nest deeper than {MAX_DEPTH} at {name}"));
        }
        let chain = self
            .table
            .chains
            .get(name)
            .ok_or_else(|| TraceError(format!("missing chain {name}")))?;
        self.rules_from(&chain.rules, flow, stage, depth)
    }

    /// Runs `rules` in order, following every branch.
    fn rules_from(
        &self,
        rules: &[Rule],
        flow: Flow,
        stage: Stage,
        depth: usize,
    ) -> Result<Vec<(Flow, Exit)>, TraceError> {
        let Some((rule, rest)) = rules.split_first() else {
            return Ok(vec![(flow, Exit::Return)]);
        };
        let mut out = Vec::new();
        for (flow, step) in self.terms(&rule.terms, flow, stage)? {
            match step {
                Step::Next => out.extend(self.rules_from(rest, flow, stage, depth)?),
                Step::Exit(exit) => out.push((flow, exit)),
                Step::Jump(target) => {
                    for (flow, exit) in self.chain(&target, flow, stage, depth + 1)? {
                        match exit {
                            Exit::Return => out.extend(self.rules_from(rest, flow, stage, depth)?),
                            exit => out.push((flow, exit)),
                        }
                    }
                }
                // A goto does not come back here: the target's return is this chain's.
                Step::Goto(target) => out.extend(self.chain(&target, flow, stage, depth + 1)?),
            }
        }
        Ok(out)
    }

    /// Runs a rule's terms in order, following every branch.
    fn terms(
        &self,
        terms: &[Term],
        flow: Flow,
        stage: Stage,
    ) -> Result<Vec<(Flow, Step)>, TraceError> {
        let Some((term, rest)) = terms.split_first() else {
            return Ok(vec![(flow, Step::Next)]);
        };
        let mut out = Vec::new();
        for (flow, effect) in self.term(term, flow, stage)? {
            match effect {
                Effect::Continue => out.extend(self.terms(rest, flow, stage)?),
                Effect::NoMatch => out.push((flow, Step::Next)),
                Effect::Stop(_) if !rest.is_empty() => {
                    return error(format!("terms after the verdict {term}"))
                }
                Effect::Stop(step) => out.push((flow, step)),
            }
        }
        Ok(out)
    }

    fn term(
        &self,
        term: &Term,
        mut flow: Flow,
        stage: Stage,
    ) -> Result<Vec<(Flow, Effect)>, TraceError> {
        let effects = match term {
            Term::Cmp { key, op, value } => {
                let matches = |hit: bool| hit == (*op == CmpOp::Eq);
                if let Some(modulus) = draw(key) {
                    let Value::Int(wanted) = value else {
                        return error(format!("{term}: a draw compared with {value}"));
                    };
                    // Every draw: those that match continue the rule, the others end it.
                    let outcomes: BTreeSet<bool> =
                        (0..modulus).map(|n| matches(n == *wanted)).collect();
                    return Ok(outcomes
                        .into_iter()
                        .map(|hit| {
                            let effect = if hit {
                                Effect::Continue
                            } else {
                                Effect::NoMatch
                            };
                            (flow.clone(), effect)
                        })
                        .collect());
                }
                let hit = match self.key(key, &flow)? {
                    Some(actual) => matches(covers(value, &actual)),
                    // Only `local` is spelled: any other source type is "not local".
                    None if *key == Key::FibSaddrType => matches(false),
                    // The packet has no such field (`tcp dport` of UDP): no comparison holds.
                    None => false,
                };
                if hit {
                    Effect::Continue
                } else {
                    Effect::NoMatch
                }
            }
            Term::Lookup { keys, set, negated } => {
                let Some(actual) = self.keys(keys, &flow)? else {
                    return Ok(vec![(flow, Effect::NoMatch)]);
                };
                let hit = match set {
                    SetRef::Anonymous(values) => values.iter().any(|v| covers(v, &actual)),
                    SetRef::Named(name) => self.set_contains(name, keys, &actual)?,
                };
                if hit != *negated {
                    Effect::Continue
                } else {
                    Effect::NoMatch
                }
            }
            Term::Vmap { keys, map } => {
                let arms = match map {
                    MapRef::Anonymous(arms) => arms,
                    MapRef::Named(name) => &self.table.maps[name].elements,
                };
                if let [key] = keys.as_slice() {
                    if let Some(modulus) = draw(key) {
                        // Every draw: its arm's verdict, or the next rule when none has it.
                        return Ok((0..modulus)
                            .map(|n| {
                                let arm = arms.iter().find(|(v, _)| *v == Value::Int(n));
                                let effect = match arm {
                                    Some((_, verdict)) => Effect::Stop(step(verdict)),
                                    None => Effect::NoMatch,
                                };
                                (flow.clone(), effect)
                            })
                            .collect());
                    }
                }
                let Some(actual) = self.keys(keys, &flow)? else {
                    return Ok(vec![(flow, Effect::NoMatch)]);
                };
                match arms.iter().find(|(v, _)| covers(v, &actual)) {
                    Some((_, verdict)) => Effect::Stop(step(verdict)),
                    None => Effect::NoMatch,
                }
            }
            Term::UpdateSet { set, key } => {
                let declared = &self.table.sets[set];
                let valid = matches!(declared.contents, SetContents::Dynamic)
                    && *key == Key::Addr(declared.family, AddrField::Saddr);
                if !valid {
                    return error(format!("{term}: not a dynamic set of source addresses"));
                }
                Effect::Continue
            }
            Term::MarkSet { op, value } => {
                flow.mark = match op {
                    MarkOp::Or => flow.mark | value,
                    MarkOp::Xor => flow.mark ^ value,
                };
                Effect::Continue
            }
            Term::Dnat { addr, port } => {
                let at_dnat = matches!(stage.hook, Hook::Prerouting | Hook::Output);
                if stage.type_ != ChainType::Nat || !at_dnat || flow.dnat.is_some() {
                    return error(format!("{term} outside a dstnat chain, or twice"));
                }
                if addr.is_ipv4() != flow.daddr.is_ipv4() {
                    return error(format!("{term}: another address family than the packet's"));
                }
                let endpoint = SocketAddr::new(*addr, *port);
                flow.dnat = Some(endpoint);
                flow.daddr = *addr;
                flow.dport = *port;
                Effect::Stop(Step::Exit(Exit::Accept))
            }
            Term::Masquerade { .. } => {
                if stage.type_ != ChainType::Nat || stage.hook != Hook::Postrouting {
                    return error(format!("{term} outside a srcnat chain"));
                }
                flow.masqueraded = true;
                Effect::Stop(Step::Exit(Exit::Accept))
            }
            Term::Reject(kind) => {
                if stage.type_ != ChainType::Filter {
                    return error(format!("{term} outside a filter chain"));
                }
                if *kind == Reject::TcpReset && flow.protocol != Protocol::Tcp {
                    return error(format!("{term} reached by a {:?} packet", flow.protocol));
                }
                Effect::Stop(Step::Exit(Exit::Reject))
            }
            Term::Verdict(verdict) => Effect::Stop(step(verdict)),
        };
        Ok(vec![(flow, effects)])
    }

    /// The packet's value of `key`; `None` when the packet has none (`tcp dport` of a UDP
    /// packet, an `ip6` address of an IPv4 one), which no comparison matches.
    fn key(&self, key: &Key, flow: &Flow) -> Result<Option<Value>, TraceError> {
        let value = match key {
            Key::Addr(family, field) => {
                let addr = match field {
                    AddrField::Saddr => flow.saddr,
                    AddrField::Daddr => flow.daddr,
                };
                if addr.is_ipv4() != (*family == Family::V4) {
                    return Ok(None);
                }
                Value::Addr(addr)
            }
            Key::L4Proto => Value::Proto(flow.protocol),
            Key::DPort(Some(protocol)) if *protocol != flow.protocol => return Ok(None),
            Key::DPort(_) => Value::Port(flow.dport),
            Key::FibSaddrType => {
                if !self.table.node_addresses.contains(&flow.saddr) {
                    return Ok(None);
                }
                Value::Local
            }
            // Every traced packet opens a connection.
            Key::CtState => Value::New,
            Key::Mark(mask) => Value::Int(flow.mark & mask.unwrap_or(u32::MAX)),
            Key::Numgen { .. } | Key::Jhash { .. } => {
                return error(format!("{key} outside a comparison or a verdict map"))
            }
        };
        Ok(Some(value))
    }

    /// The packet's values of a concatenation of `keys` (one value for one key).
    fn keys(&self, keys: &[Key], flow: &Flow) -> Result<Option<Value>, TraceError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match self.key(key, flow)? {
                Some(v) => values.push(v),
                None => return Ok(None),
            }
        }
        Ok(Some(match <[Value; 1]>::try_from(values) {
            Ok([value]) => value,
            Err(values) => Value::Concat(values),
        }))
    }

    fn set_contains(&self, name: &str, keys: &[Key], actual: &Value) -> Result<bool, TraceError> {
        let set = &self.table.sets[name];
        if !matches!(keys, [Key::Addr(family, _)] if *family == set.family) {
            return error(format!(
                "set {name} of {:?} looked up with {keys:?}",
                set.family
            ));
        }
        Ok(match &set.contents {
            SetContents::Fixed(values) => values.iter().any(|v| covers(v, actual)),
            SetContents::Dynamic => self
                .dynamic
                .get(name)
                .is_some_and(|addrs| addrs.iter().any(|a| covers(&Value::Addr(*a), actual))),
        })
    }
}

/// The modulus of a random or hashed draw.
fn draw(key: &Key) -> Option<u32> {
    match key {
        Key::Numgen { modulus, .. } | Key::Jhash { modulus, .. } => Some(*modulus),
        _ => None,
    }
}

/// Whether an element (or compared value) matches the packet's value: equal, or a prefix
/// holding the address.
fn covers(element: &Value, actual: &Value) -> bool {
    match (element, actual) {
        (Value::Net(net), Value::Addr(addr)) => net.contains(addr),
        (Value::Concat(elements), Value::Concat(actuals)) => {
            elements.len() == actuals.len()
                && elements.iter().zip(actuals).all(|(e, a)| covers(e, a))
        }
        (element, actual) => element == actual,
    }
}

fn step(verdict: &Verdict) -> Step {
    match verdict {
        Verdict::Jump(name) => Step::Jump(name.clone()),
        Verdict::Goto(name) => Step::Goto(name.clone()),
        Verdict::Accept => Step::Exit(Exit::Accept),
        Verdict::Drop => Step::Exit(Exit::Drop),
        Verdict::Return => Step::Exit(Exit::Return),
    }
}

/// The one outcome every path of a trace agrees on; an error naming the paths when they do not
/// (a masquerade without DNAT is one: only service traffic is marked).
pub(crate) fn outcome(ends: &BTreeSet<End>) -> Result<Outcome, String> {
    let mut endpoints = BTreeSet::new();
    let mut masquerade = BTreeSet::new();
    for end in ends {
        match end {
            End::Endpoint {
                endpoint,
                masqueraded,
            } => {
                endpoints.insert(*endpoint);
                masquerade.insert(*masqueraded);
            }
            _ if ends.len() > 1 => return Err(format!("paths disagree: {ends:?}")),
            End::Drop => return Ok(Outcome::Drop),
            End::Reject => return Ok(Outcome::Reject),
            End::Untouched { masqueraded: false } => return Ok(Outcome::Untouched),
            End::Untouched { masqueraded: true } => return Err("masqueraded without DNAT".into()),
        }
    }
    match masquerade.into_iter().collect::<Vec<_>>().as_slice() {
        [masqueraded] => Ok(Outcome::Endpoints {
            endpoints,
            masqueraded: *masqueraded,
        }),
        [] => Err("no path".into()),
        _ => Err(format!("some paths masquerade, others not: {ends:?}")),
    }
}

/// Reads `table ip switchyard { … }` (`ip6` for [`Family::V6`]) as
/// [`super::full_transaction`] writes it.
fn read(text: &str, family: Family) -> Result<Table, TraceError> {
    let mut lines = text.lines().enumerate();
    let ip = family.nft();
    for expected in [
        format!("add table {ip} {TABLE}"),
        format!("delete table {ip} {TABLE}"),
        format!("table {ip} {TABLE} {{"),
    ] {
        match lines.next() {
            Some((_, line)) if line == expected => {}
            other => return error(format!("expected {expected:?}, found {other:?}")),
        }
    }
    let mut table = Table {
        family,
        chains: BTreeMap::new(),
        sets: BTreeMap::new(),
        maps: BTreeMap::new(),
        node_addresses: BTreeSet::new(),
    };
    loop {
        let Some((n, line)) = lines.next() else {
            return error("the table is not closed");
        };
        if line == "}" {
            break;
        }
        let at = |reason: String| TraceError(format!("line {}: {reason}: {line:?}", n + 1));
        let decl = line
            .strip_prefix('\t')
            .ok_or_else(|| at("not a declaration".into()))?;
        // The lines of a block, up to its closing `\t}`.
        let mut body = Vec::new();
        if decl.ends_with(" {") {
            loop {
                match lines.next() {
                    Some((_, "\t}")) => break,
                    Some((_, inner)) => body.push(
                        inner
                            .strip_prefix("\t\t")
                            .ok_or_else(|| at(format!("bad block line {inner:?}")))?,
                    ),
                    None => return Err(at("unclosed block".into())),
                }
            }
        }
        let (kind, rest) = decl.split_once(' ').ok_or_else(|| at("no name".into()))?;
        let name = rest
            .split_once(' ')
            .map_or(rest, |(name, _)| name)
            .to_string();
        if kind != "set" && rest != format!("{name} {{") {
            return Err(at(format!("a {kind} on one line")));
        }
        let duplicate = match kind {
            "chain" => table
                .chains
                .insert(name, read_chain(&body).map_err(|e| at(e.0))?)
                .is_some(),
            "set" => {
                let set = match rest.strip_prefix(&format!("{name} {{ ")) {
                    // `set NAME { type …; flags …; timeout …; }`: a dynamic set on one line.
                    Some(inline) => {
                        let inline = inline
                            .strip_suffix(" }")
                            .ok_or_else(|| at("an unclosed set".into()))?;
                        let decl = SetDecl::parse(inline)?;
                        if !decl.dynamic {
                            return Err(at("a one-line set must be dynamic".into()));
                        }
                        Set {
                            family: decl.family,
                            contents: SetContents::Dynamic,
                        }
                    }
                    None => read_fixed_set(&body).map_err(|e| at(e.0))?,
                };
                table.sets.insert(name, set).is_some()
            }
            "map" => table
                .maps
                .insert(name, read_map(&body).map_err(|e| at(e.0))?)
                .is_some(),
            other => return Err(at(format!("unknown declaration {other:?}"))),
        };
        if duplicate {
            return Err(at("declared twice".into()));
        }
    }
    if let Some((n, line)) = lines.next() {
        return error(format!("line {}: after the table: {line:?}", n + 1));
    }
    Ok(table)
}

/// A chain's body: an optional base-chain line, then rules.
fn read_chain(body: &[&str]) -> Result<Chain, TraceError> {
    let (base, rules) = match body.split_first() {
        Some((first, rest)) if first.starts_with("type ") => (Some(read_base(first)?), rest),
        _ => (None, body),
    };
    let rules = rules
        .iter()
        .map(|r| Rule::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Chain { base, rules })
}

/// `type nat hook prerouting priority dstnat; policy accept;`
fn read_base(line: &str) -> Result<Base, TraceError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["type", type_, "hook", hook, "priority", priority, "policy", "accept;"] = words[..] else {
        return error(format!("base chain {line:?}"));
    };
    let type_ = match type_ {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        other => return error(format!("chain type {other:?}")),
    };
    let hook = match hook {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        other => return error(format!("hook {other:?}")),
    };
    // nft's named priorities of the ip and ip6 families (the same numbers).
    let priority = match priority.strip_suffix(';') {
        Some("dstnat") => -100,
        Some("filter") => 0,
        Some("srcnat") => 100,
        Some(n) => n
            .parse()
            .map_err(|_| TraceError(format!("priority {n:?}")))?,
        None => return error(format!("priority {priority:?}")),
    };
    if type_ == ChainType::Nat
        && ![Hook::Prerouting, Hook::Output, Hook::Postrouting].contains(&hook)
    {
        return error(format!("a nat chain at {hook:?}"));
    }
    Ok(Base {
        type_,
        hook,
        priority,
    })
}

/// `type ipv4_addr` and an optional `elements = { a, b }`.
fn read_fixed_set(body: &[&str]) -> Result<Set, TraceError> {
    let (type_line, rest) = body
        .split_first()
        .ok_or_else(|| TraceError("an empty set block".into()))?;
    let decl = SetDecl::parse(&format!("{type_line};"))?;
    if decl.dynamic {
        return error("a dynamic set written as a block");
    }
    let key = [Key::Addr(decl.family, AddrField::Daddr)];
    let values = match rest {
        [] => Vec::new(),
        [elements] => braced(elements)?
            .split(',')
            .map(|e| Value::parse_key(e.trim(), &key))
            .collect::<Result<_, _>>()?,
        _ => return error(format!("set lines {rest:?}")),
    };
    Ok(Set {
        family: decl.family,
        contents: SetContents::Fixed(values),
    })
}

/// `type K . K : verdict` and optional `elements = { key : verdict, … }` (one per line).
fn read_map(body: &[&str]) -> Result<Map, TraceError> {
    let (type_line, rest) = body
        .split_first()
        .ok_or_else(|| TraceError("an empty map block".into()))?;
    let type_ = type_line
        .strip_prefix("type ")
        .ok_or_else(|| TraceError(format!("map type {type_line:?}")))?;
    let keys = map_keys(type_)?;
    let mut elements = Vec::new();
    if !rest.is_empty() {
        // Continuation lines are indented one tab more than the block.
        let joined: Vec<&str> = rest.iter().map(|l| l.trim_start_matches('\t')).collect();
        for element in braced(&joined.join(" "))?.split(',') {
            let (key, verdict) = element
                .trim()
                .split_once(" : ")
                .ok_or_else(|| TraceError(format!("map element {element:?}")))?;
            elements.push((Value::parse_key(key, &keys)?, Verdict::parse(verdict)?));
        }
    }
    Ok(Map { keys, elements })
}

/// The inside of `elements = { … }`.
fn braced(line: &str) -> Result<&str, TraceError> {
    line.strip_prefix("elements = { ")
        .and_then(|l| l.strip_suffix(" }"))
        .ok_or_else(|| TraceError(format!("elements {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::super::build;
    use super::super::fixtures::{node, web, web6};
    use super::super::flows::{endpoints, tables, Origin};
    use super::*;

    #[test]
    fn every_packet_flow_table_holds_for_the_nftables_rules() {
        let mut failures = Vec::new();
        let mut rows = 0;
        for table in tables() {
            // A packet goes through the table of its family.
            let by_family: BTreeMap<Family, Table> = Family::ALL
                .into_iter()
                .map(|family| {
                    let ruleset = build(&table.snapshot, &table.node, family);
                    let traced = Table::load(&ruleset, table.node.node_port_ips.iter().copied())
                        .unwrap_or_else(|e| panic!("{} ({family:?}): {e}", table.name));
                    (family, traced)
                })
                .collect();
            let known = endpoints(&table);
            for row in &table.rows {
                rows += 1;
                let traced = &by_family[&Family::of(&row.packet.destination)];
                if let Outcome::Endpoints { endpoints, .. } = &row.nftables {
                    assert!(endpoints.is_subset(&known), "{}: {row:?}", table.name);
                }
                let mut dynamic = BTreeMap::new();
                if let Some(endpoint) = row.affinity {
                    let set = traced.affinity_set(endpoint).expect("affinity set");
                    dynamic.insert(set, BTreeSet::from([row.packet.source]));
                }
                let actual = traced
                    .trace(&row.packet, &dynamic)
                    .map_err(|e| e.to_string())
                    .and_then(|ends| outcome(&ends));
                if actual.as_ref() != Ok(&row.nftables) {
                    failures.push(format!(
                        "{}: {:?}\n    expected {:?}\n    traced   {actual:?}",
                        table.name, row.packet, row.nftables
                    ));
                }
            }
        }
        assert!(rows >= 80, "only {rows} rows");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn traced(extra: Option<(&str, &str)>) -> Result<Table, TraceError> {
        let snapshot = [web(&[("10.244.1.2", "node-a")])].into_iter().collect();
        with_rule(build(&snapshot, &node(), Family::V4), extra)
    }

    fn traced6(extra: Option<(&str, &str)>) -> Result<Table, TraceError> {
        let snapshot = [web6(&[("fd00:10:244:1::2", "node-a")])]
            .into_iter()
            .collect();
        with_rule(build(&snapshot, &node(), Family::V6), extra)
    }

    /// `ruleset`'s table with `rule` first in the first chain named `chain…`.
    fn with_rule(mut ruleset: Ruleset, extra: Option<(&str, &str)>) -> Result<Table, TraceError> {
        if let Some((chain, rule)) = extra {
            let rules = ruleset
                .services
                .values_mut()
                .flat_map(|s| s.chains.iter_mut())
                .find(|(name, _)| name.starts_with(chain))
                .expect("chain")
                .1;
            rules.insert(0, rule.to_string());
        }
        Table::load(&ruleset, node().node_port_ips)
    }

    fn from_pod() -> Packet {
        Packet {
            from: Origin::Pod,
            source: "10.244.1.5".parse().expect("ip"),
            protocol: Protocol::Tcp,
            destination: "10.96.0.10".parse().expect("ip"),
            port: 80,
        }
    }

    #[test]
    fn a_rule_outside_the_language_fails_the_load() {
        traced(None).expect("the builder's own rules load");
        let e = traced(Some(("service-", "ip daddr 10.0.0.1 counter drop")))
            .expect_err("counter is outside the language");
        assert!(e.to_string().contains("counter"), "{e}");
        let e = traced(Some(("service-", "goto no-such-chain"))).expect_err("no such chain");
        assert!(e.to_string().contains("missing chain no-such-chain"), "{e}");
        let e = traced(Some(("service-", "ip saddr @no-such-set drop"))).expect_err("no such set");
        assert!(e.to_string().contains("missing set"), "{e}");
    }

    #[test]
    fn a_statement_in_the_wrong_chain_fails_the_trace() {
        // Masquerading belongs to postrouting; the service chain runs at dstnat.
        let table = traced(Some(("service-", "masquerade"))).expect("loads");
        let e = table
            .trace(&from_pod(), &BTreeMap::new())
            .expect_err("a misplaced statement");
        assert!(e.to_string().contains("outside a srcnat chain"), "{e}");
        // Rejecting is a filter chain's.
        let table = traced(Some(("service-", "reject"))).expect("loads");
        let e = table
            .trace(&from_pod(), &BTreeMap::new())
            .expect_err("a misplaced statement");
        assert!(e.to_string().contains("outside a filter chain"), "{e}");
    }

    #[test]
    fn the_other_familys_words_fail_the_ipv6_load() {
        traced6(None).expect("the builder's own IPv6 rules load");
        for (rule, word) in [
            ("ip saddr 10.0.0.1 drop", "ip saddr"),
            ("reject with icmp type port-unreachable", "icmp type"),
            ("meta l4proto tcp dnat to 10.0.0.1:80", "dnat to 10.0.0.1"),
            ("jhash ip saddr mod 2 seed 0x1 == 0 drop", "jhash ip saddr"),
        ] {
            let e = traced6(Some(("service-", rule))).expect_err(rule);
            assert!(e.to_string().contains(word), "{rule}: {e}");
        }
        let e = traced(Some((
            "service-",
            "reject with icmpv6 type port-unreachable",
        )))
        .expect_err("ICMPv6 in the ip table");
        assert!(e.to_string().contains("icmpv6"), "{e}");
    }

    #[test]
    fn a_packet_goes_only_through_its_familys_table() {
        let v4 = traced(None).expect("loads");
        let v6 = traced6(None).expect("loads");
        let mut packet6 = from_pod();
        packet6.source = "fd00:10:244:1::5".parse().expect("ip");
        packet6.destination = "fd00:96::a".parse().expect("ip");
        assert!(v4.trace(&packet6, &BTreeMap::new()).is_err());
        assert!(v6.trace(&from_pod(), &BTreeMap::new()).is_err());
        let ends = v6.trace(&packet6, &BTreeMap::new()).expect("traces");
        assert_eq!(
            outcome(&ends).expect("one outcome"),
            Outcome::Endpoints {
                endpoints: BTreeSet::from(["[fd00:10:244:1::2]:8080".parse().expect("addr")]),
                masqueraded: false,
            }
        );
    }

    #[test]
    fn a_packet_from_the_node_needs_a_node_address() {
        let table = traced(None).expect("loads");
        let mut packet = from_pod();
        packet.from = Origin::Node;
        assert!(table.trace(&packet, &BTreeMap::new()).is_err());
    }

    #[test]
    fn paths_that_disagree_are_no_outcome() {
        let endpoint = |masqueraded| End::Endpoint {
            endpoint: "10.244.1.2:8080".parse().expect("addr"),
            masqueraded,
        };
        assert!(outcome(&BTreeSet::from([endpoint(true), endpoint(false)])).is_err());
        assert!(outcome(&BTreeSet::from([endpoint(false), End::Drop])).is_err());
        assert!(outcome(&BTreeSet::from([End::Untouched { masqueraded: true }])).is_err());
        assert_eq!(
            outcome(&BTreeSet::from([End::Reject])).expect("one outcome"),
            Outcome::Reject
        );
    }
}

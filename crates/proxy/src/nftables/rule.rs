//! The grammar of the rules, map elements and set declarations [`super`] writes, parsed back
//! into a typed form.
//!
//! The builder's text is the canonical form of our rules: `nft -f` loads it, the goldens hold
//! it. Two consumers need its meaning rather than its spelling: the netlink encoder, which
//! programs partial syncs without `nft` (whose per-transaction cache dump of every chain costs
//! far more than the change itself at 10,000 services), and the packet tracer of the tests,
//! which follows a packet through the rules. Both go through this one parser, and it is strict:
//! anything outside the small language the builder speaks is an error, never a guess, so a rule
//! shape added to the builder without being taught here fails loudly in the tests (every golden
//! rule must parse and print back to the same text, see the tests below).
//!
//! The language (`ip` and `ip6` alike):
//!
//! ```text
//! rule      := term+
//! term      := key-expr ( "vmap" map | [ "==" | "!=" ] value | [ "!=" ] set )
//!            | "update" "@"NAME "{" addr-field "}"
//!            | "meta" "mark" "set" "meta" "mark" ("|" | "^") INT
//!            | "dnat" "to" ADDR ":" PORT | "dnat" "to" "[" ADDR6 "]" ":" PORT
//!            | "masquerade" [ "fully-random" ]
//!            | "reject" [ "with" ( "tcp" "reset" | ("icmp" | "icmpv6") "type" "port-unreachable" ) ]
//!            | ( "jump" | "goto" ) NAME | "drop" | "accept" | "return"
//! key-expr  := key ( "." key )*
//! key       := ("ip" | "ip6") ("saddr" | "daddr") | "meta" "l4proto" | "th" "dport"
//!            | ("tcp" | "udp" | "sctp") "dport" | "fib" "saddr" "type" | "ct" "state"
//!            | "meta" "mark" [ "&" INT ] | "numgen" ("random" | "inc") "mod" INT
//!            | "jhash" ("ip" | "ip6") "saddr" "mod" INT "seed" INT
//! set       := "@"NAME | "{" value ("," value)* "}"
//! map       := "@"NAME | "{" value ":" verdict ("," value ":" verdict)* "}"
//! ```

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::Family;
use crate::model::Protocol;

/// Which address of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

impl AddrField {
    fn keyword(self) -> &'static str {
        match self {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        }
    }
}

/// How `numgen` draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NumgenMode {
    Random,
    Inc,
}

/// A value taken from the packet (or its metadata) that a term compares or looks up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `ip saddr`, `ip6 daddr`, ...
    Addr(Family, AddrField),
    /// `meta l4proto`.
    L4Proto,
    /// `th dport` (any transport header) or `tcp dport` (which also requires TCP).
    DPort(Option<Protocol>),
    /// `fib saddr type`.
    FibSaddrType,
    /// `ct state`.
    CtState,
    /// `meta mark`, optionally masked (`meta mark & 0x4000`).
    Mark(Option<u32>),
    /// `numgen random mod N`.
    Numgen { mode: NumgenMode, modulus: u32 },
    /// `jhash ip saddr mod N seed S`.
    Jhash {
        family: Family,
        modulus: u32,
        seed: u32,
    },
}

/// A constant a key is compared with, or an element of an anonymous set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Addr(IpAddr),
    /// A prefix (`10.244.0.0/16`).
    Net(IpNet),
    Proto(Protocol),
    Port(u16),
    /// A number (a mark, a numgen or hash result).
    Int(u32),
    /// `local` (a `fib ... type`).
    Local,
    /// `new` (a `ct state`).
    New,
    /// A concatenation (`10.96.0.10 . tcp . 80`), one value per key.
    Concat(Vec<Value>),
}

/// The comparison of a [`Term::Cmp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
}

/// A verdict: what happens to the packet when a rule ends (or a map chooses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Jump(String),
    Goto(String),
    Drop,
    Accept,
    Return,
}

/// A set looked up: one of the table's, or anonymous (written inline).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SetRef {
    Named(String),
    Anonymous(Vec<Value>),
}

/// A verdict map looked up: one of the table's, or anonymous.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MapRef {
    Named(String),
    Anonymous(Vec<(Value, Verdict)>),
}

/// How `reject` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// `reject` alone: the family's ICMP port unreachable.
    Default,
    TcpReset,
    IcmpPortUnreachable,
    Icmpv6PortUnreachable,
}

/// A bit operation setting the packet mark from itself (`meta mark set meta mark | 0x4000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkOp {
    Or,
    Xor,
}

/// One term of a rule: a match (the rule stops when it fails), a statement or a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    /// `key value`, `key == value` or `key != value` (a prefix value matches its addresses).
    Cmp {
        key: Key,
        op: CmpOp,
        value: Value,
    },
    /// `keys @set`, `keys != { ... }`.
    Lookup {
        keys: Vec<Key>,
        set: SetRef,
        negated: bool,
    },
    /// `keys vmap @map`: the matching element's verdict, nothing when none matches.
    Vmap {
        keys: Vec<Key>,
        map: MapRef,
    },
    /// `update @set { ip saddr }`: adds (or refreshes) the key in a dynamic set.
    UpdateSet {
        set: String,
        key: Key,
    },
    /// `meta mark set meta mark | 0x4000`.
    MarkSet {
        op: MarkOp,
        value: u32,
    },
    /// `dnat to 10.0.0.1:8080` (the preceding `meta l4proto` term says for which protocol).
    Dnat {
        addr: IpAddr,
        port: u16,
    },
    Masquerade {
        fully_random: bool,
    },
    Reject(Reject),
    Verdict(Verdict),
}

/// One rule: its terms, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub terms: Vec<Term>,
}

/// A text outside the language.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {text:?}: {reason}")]
pub struct ParseError {
    pub text: String,
    pub reason: String,
}

/// The declaration of a named set (`type ipv4_addr; flags dynamic,timeout; timeout 10800s;`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetDecl {
    pub family: Family,
    pub dynamic: bool,
    /// Element timeout in seconds.
    pub timeout: Option<u32>,
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, ParseError> {
        let mut parser = Parser::new(text);
        let mut terms = Vec::new();
        while !parser.at_end() {
            terms.push(parser.term()?);
        }
        if terms.is_empty() {
            return Err(parser.error("empty rule"));
        }
        Ok(Rule { terms })
    }
}

impl Verdict {
    /// A map element's verdict (`goto service-…`, `drop`).
    pub fn parse(text: &str) -> Result<Verdict, ParseError> {
        let mut parser = Parser::new(text);
        let verdict = parser.verdict()?;
        parser.end()?;
        Ok(verdict)
    }
}

impl Value {
    /// A map or set element's key (`10.96.0.10 . tcp . 80`), read as the given key types.
    pub fn parse_key(text: &str, keys: &[Key]) -> Result<Value, ParseError> {
        let mut parser = Parser::new(text);
        let value = parser.value_for(keys)?;
        parser.end()?;
        Ok(value)
    }
}

impl SetDecl {
    pub fn parse(text: &str) -> Result<SetDecl, ParseError> {
        let mut parser = Parser::new(text);
        parser.expect("type")?;
        let family = match parser.word()? {
            "ipv4_addr;" => Family::V4,
            "ipv6_addr;" => Family::V6,
            other => return Err(parser.error(format!("set type {other:?}"))),
        };
        let mut decl = SetDecl {
            family,
            dynamic: false,
            timeout: None,
        };
        while !parser.at_end() {
            match parser.word()? {
                "flags" => match parser.word()? {
                    "dynamic,timeout;" => decl.dynamic = true,
                    other => return Err(parser.error(format!("set flags {other:?}"))),
                },
                "timeout" => {
                    let word = parser.word()?;
                    let seconds = word
                        .strip_suffix("s;")
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| parser.error(format!("timeout {word:?}")))?;
                    decl.timeout = Some(seconds);
                }
                other => return Err(parser.error(format!("set declaration {other:?}"))),
            }
        }
        Ok(decl)
    }
}

/// The key types of a map declared as `ipv4_addr . inet_proto . inet_service : verdict`.
pub fn map_keys(type_: &str) -> Result<Vec<Key>, ParseError> {
    let error = |reason: String| ParseError {
        text: type_.to_string(),
        reason,
    };
    let keys = type_
        .strip_suffix(" : verdict")
        .ok_or_else(|| error("not a verdict map".into()))?;
    keys.split(" . ")
        .map(|t| match t {
            "ipv4_addr" => Ok(Key::Addr(Family::V4, AddrField::Daddr)),
            "ipv6_addr" => Ok(Key::Addr(Family::V6, AddrField::Daddr)),
            "inet_proto" => Ok(Key::L4Proto),
            "inet_service" => Ok(Key::DPort(None)),
            other => Err(error(format!("key type {other:?}"))),
        })
        .collect()
}

/// A cursor over the whitespace-separated words of one rule.
struct Parser<'a> {
    text: &'a str,
    words: Vec<&'a str>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text,
            words: text.split_whitespace().collect(),
            at: 0,
        }
    }

    fn error(&self, reason: impl Into<String>) -> ParseError {
        ParseError {
            text: self.text.to_string(),
            reason: reason.into(),
        }
    }

    fn at_end(&self) -> bool {
        self.at >= self.words.len()
    }

    fn end(&self) -> Result<(), ParseError> {
        match self.words.get(self.at) {
            None => Ok(()),
            Some(word) => Err(self.error(format!("unexpected {word:?}"))),
        }
    }

    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).copied()
    }

    fn word(&mut self) -> Result<&'a str, ParseError> {
        let word = self
            .peek()
            .ok_or_else(|| self.error("unexpected end of rule"))?;
        self.at += 1;
        Ok(word)
    }

    fn expect(&mut self, expected: &str) -> Result<(), ParseError> {
        let word = self.word()?;
        if word == expected {
            Ok(())
        } else {
            Err(self.error(format!("expected {expected:?}, found {word:?}")))
        }
    }

    fn eat(&mut self, word: &str) -> bool {
        if self.peek() == Some(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn int(&mut self) -> Result<u32, ParseError> {
        let word = self.word()?;
        parse_int(word).ok_or_else(|| self.error(format!("expected a number, found {word:?}")))
    }

    fn name(&mut self) -> Result<String, ParseError> {
        let word = self.word()?;
        if is_name(word) {
            Ok(word.to_string())
        } else {
            Err(self.error(format!("expected a name, found {word:?}")))
        }
    }

    fn at_name(&mut self) -> Result<String, ParseError> {
        let word = self.word()?;
        match word.strip_prefix('@') {
            Some(name) if is_name(name) => Ok(name.to_string()),
            _ => Err(self.error(format!("expected @name, found {word:?}"))),
        }
    }

    fn verdict(&mut self) -> Result<Verdict, ParseError> {
        match self.word()? {
            "jump" => Ok(Verdict::Jump(self.name()?)),
            "goto" => Ok(Verdict::Goto(self.name()?)),
            "drop" => Ok(Verdict::Drop),
            "accept" => Ok(Verdict::Accept),
            "return" => Ok(Verdict::Return),
            other => Err(self.error(format!("expected a verdict, found {other:?}"))),
        }
    }

    fn term(&mut self) -> Result<Term, ParseError> {
        let first = self.peek().unwrap_or_default();
        match first {
            "jump" | "goto" | "drop" | "accept" | "return" => {
                return Ok(Term::Verdict(self.verdict()?))
            }
            "update" => {
                self.at += 1;
                let set = self.at_name()?;
                self.expect("{")?;
                let key = self.key()?;
                self.expect("}")?;
                return Ok(Term::UpdateSet { set, key });
            }
            "dnat" => {
                self.at += 1;
                self.expect("to")?;
                let word = self.word()?;
                let (addr, port) = parse_addr_port(word)
                    .ok_or_else(|| self.error(format!("dnat target {word:?}")))?;
                return Ok(Term::Dnat { addr, port });
            }
            "masquerade" => {
                self.at += 1;
                let fully_random = self.eat("fully-random");
                return Ok(Term::Masquerade { fully_random });
            }
            "reject" => {
                self.at += 1;
                if !self.eat("with") {
                    return Ok(Term::Reject(Reject::Default));
                }
                let kind = match self.word()? {
                    "tcp" => {
                        self.expect("reset")?;
                        Reject::TcpReset
                    }
                    icmp @ ("icmp" | "icmpv6") => {
                        self.expect("type")?;
                        self.expect("port-unreachable")?;
                        if icmp == "icmp" {
                            Reject::IcmpPortUnreachable
                        } else {
                            Reject::Icmpv6PortUnreachable
                        }
                    }
                    other => return Err(self.error(format!("reject with {other:?}"))),
                };
                return Ok(Term::Reject(kind));
            }
            "meta" if self.words.get(self.at + 2) == Some(&"set") => {
                self.at += 1;
                self.expect("mark")?;
                self.expect("set")?;
                self.expect("meta")?;
                self.expect("mark")?;
                let op = match self.word()? {
                    "|" => MarkOp::Or,
                    "^" => MarkOp::Xor,
                    other => return Err(self.error(format!("mark operation {other:?}"))),
                };
                let value = self.int()?;
                return Ok(Term::MarkSet { op, value });
            }
            _ => {}
        }
        let mut keys = vec![self.key()?];
        while self.eat(".") {
            keys.push(self.key()?);
        }
        if self.eat("vmap") {
            let map = if self.eat("{") {
                let mut arms = Vec::new();
                loop {
                    let value = self.value_for(&keys)?;
                    self.expect(":")?;
                    let verdict = self.verdict_in_list()?;
                    arms.push((value, verdict.0));
                    if verdict.1 {
                        break;
                    }
                }
                MapRef::Anonymous(arms)
            } else {
                MapRef::Named(self.at_name()?)
            };
            return Ok(Term::Vmap { keys, map });
        }
        let negated = self.eat("!=");
        if !negated {
            self.eat("==");
        }
        if self.peek().is_some_and(|w| w.starts_with('@')) {
            let set = SetRef::Named(self.at_name()?);
            return Ok(Term::Lookup { keys, set, negated });
        }
        if self.eat("{") {
            let mut values = Vec::new();
            loop {
                let word = self.word()?;
                let (word, last) = match word.strip_suffix(',') {
                    Some(w) => (w, false),
                    None => {
                        self.expect("}")?;
                        (word, true)
                    }
                };
                values.push(self.scalar(&keys, word)?);
                if last {
                    break;
                }
            }
            let set = SetRef::Anonymous(values);
            return Ok(Term::Lookup { keys, set, negated });
        }
        let value = self.value_for(&keys)?;
        let op = if negated { CmpOp::Ne } else { CmpOp::Eq };
        match keys.as_slice() {
            [key] => Ok(Term::Cmp {
                key: key.clone(),
                op,
                value,
            }),
            _ => Err(self.error("a concatenation compared with a value")),
        }
    }

    /// A verdict inside `{ ... }`, and whether it closed the list.
    fn verdict_in_list(&mut self) -> Result<(Verdict, bool), ParseError> {
        let word = self.word()?;
        let simple = |w: &str| match w {
            "drop" => Some(Verdict::Drop),
            "accept" => Some(Verdict::Accept),
            "return" => Some(Verdict::Return),
            _ => None,
        };
        let (verdict, last) = match word {
            "jump" | "goto" => {
                let target = self.word()?;
                let (target, last) = match target.strip_suffix(',') {
                    Some(t) => (t, false),
                    None => (target, true),
                };
                if !is_name(target) {
                    return Err(self.error(format!("expected a name, found {target:?}")));
                }
                let verdict = if word == "jump" {
                    Verdict::Jump(target.to_string())
                } else {
                    Verdict::Goto(target.to_string())
                };
                (verdict, last)
            }
            w => match simple(w.trim_end_matches(',')) {
                Some(v) => (v, !w.ends_with(',')),
                None => return Err(self.error(format!("expected a verdict, found {w:?}"))),
            },
        };
        if last {
            self.expect("}")?;
        }
        Ok((verdict, last))
    }

    fn key(&mut self) -> Result<Key, ParseError> {
        let word = self.word()?;
        if let Some(family) = parse_family(word) {
            let field = match self.word()? {
                "saddr" => AddrField::Saddr,
                "daddr" => AddrField::Daddr,
                other => return Err(self.error(format!("address field {other:?}"))),
            };
            return Ok(Key::Addr(family, field));
        }
        match word {
            "meta" => match self.word()? {
                "l4proto" => Ok(Key::L4Proto),
                "mark" => {
                    if self.eat("&") {
                        Ok(Key::Mark(Some(self.int()?)))
                    } else {
                        Ok(Key::Mark(None))
                    }
                }
                other => Err(self.error(format!("meta {other:?}"))),
            },
            "th" => {
                self.expect("dport")?;
                Ok(Key::DPort(None))
            }
            "tcp" | "udp" | "sctp" => {
                self.expect("dport")?;
                Ok(Key::DPort(parse_proto(word)))
            }
            "fib" => {
                self.expect("saddr")?;
                self.expect("type")?;
                Ok(Key::FibSaddrType)
            }
            "ct" => {
                self.expect("state")?;
                Ok(Key::CtState)
            }
            "numgen" => {
                let mode = match self.word()? {
                    "random" => NumgenMode::Random,
                    "inc" => NumgenMode::Inc,
                    other => return Err(self.error(format!("numgen {other:?}"))),
                };
                self.expect("mod")?;
                let modulus = self.int()?;
                Ok(Key::Numgen { mode, modulus })
            }
            "jhash" => {
                let family = self
                    .word()
                    .ok()
                    .and_then(parse_family)
                    .ok_or_else(|| self.error("jhash of an address family"))?;
                self.expect("saddr")?;
                self.expect("mod")?;
                let modulus = self.int()?;
                self.expect("seed")?;
                let seed = self.int()?;
                Ok(Key::Jhash {
                    family,
                    modulus,
                    seed,
                })
            }
            other => Err(self.error(format!("unknown expression {other:?}"))),
        }
    }

    /// A value for `keys`: one word per key, joined by `.`.
    fn value_for(&mut self, keys: &[Key]) -> Result<Value, ParseError> {
        let mut values = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                self.expect(".")?;
            }
            let word = self.word()?;
            values.push(self.scalar(std::slice::from_ref(key), word)?);
        }
        Ok(match <[Value; 1]>::try_from(values) {
            Ok([value]) => value,
            Err(values) => Value::Concat(values),
        })
    }

    /// One word as a value of the (single) key.
    fn scalar(&self, keys: &[Key], word: &str) -> Result<Value, ParseError> {
        let bad = || self.error(format!("{word:?} is not a value of {keys:?}"));
        let [key] = keys else { return Err(bad()) };
        let value = match key {
            Key::Addr(family, _) => {
                let value = match word.parse::<IpAddr>() {
                    Ok(addr) => Value::Addr(addr),
                    Err(_) => Value::Net(word.parse::<IpNet>().map_err(|_| bad())?),
                };
                let v4 = match &value {
                    Value::Addr(a) => a.is_ipv4(),
                    Value::Net(n) => matches!(n, IpNet::V4(_)),
                    _ => unreachable!("an address value"),
                };
                if v4 != (*family == Family::V4) {
                    return Err(bad());
                }
                value
            }
            Key::L4Proto => Value::Proto(parse_proto(word).ok_or_else(bad)?),
            Key::DPort(_) => Value::Port(word.parse().map_err(|_| bad())?),
            Key::FibSaddrType if word == "local" => Value::Local,
            Key::CtState if word == "new" => Value::New,
            Key::Mark(_) | Key::Numgen { .. } | Key::Jhash { .. } => {
                Value::Int(parse_int(word).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        };
        Ok(value)
    }
}

fn parse_family(word: &str) -> Option<Family> {
    match word {
        "ip" => Some(Family::V4),
        "ip6" => Some(Family::V6),
        _ => None,
    }
}

fn parse_proto(word: &str) -> Option<Protocol> {
    match word {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn parse_int(word: &str) -> Option<u32> {
    match word.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

/// Our chain and set names: letters, digits and `-_/.`, as the builder makes them.
fn is_name(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_/.".contains(&b))
        && word.as_bytes()[0].is_ascii_alphabetic()
}

/// `10.0.0.1:8080` or `[fd00::1]:8080`.
fn parse_addr_port(word: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = match word.strip_prefix('[') {
        Some(rest) => {
            let (addr, port) = rest.split_once("]:")?;
            (addr.parse::<std::net::Ipv6Addr>().ok()?.into(), port)
        }
        None => {
            let (addr, port) = word.split_once(':')?;
            (addr.parse::<std::net::Ipv4Addr>().ok()?.into(), port)
        }
    };
    Some((addr, port.parse().ok()?))
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Addr(family, field) => write!(f, "{} {}", family.nft(), field.keyword()),
            Key::L4Proto => f.write_str("meta l4proto"),
            Key::DPort(None) => f.write_str("th dport"),
            Key::DPort(Some(proto)) => write!(f, "{} dport", proto.nft()),
            Key::FibSaddrType => f.write_str("fib saddr type"),
            Key::CtState => f.write_str("ct state"),
            Key::Mark(None) => f.write_str("meta mark"),
            Key::Mark(Some(mask)) => write!(f, "meta mark & {mask:#x}"),
            Key::Numgen { mode, modulus } => {
                let mode = match mode {
                    NumgenMode::Random => "random",
                    NumgenMode::Inc => "inc",
                };
                write!(f, "numgen {mode} mod {modulus}")
            }
            Key::Jhash {
                family,
                modulus,
                seed,
            } => write!(
                f,
                "jhash {} saddr mod {modulus} seed {seed:#x}",
                family.nft()
            ),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Addr(addr) => write!(f, "{addr}"),
            Value::Net(net) => write!(f, "{net}"),
            Value::Proto(proto) => f.write_str(proto.nft()),
            Value::Port(port) => write!(f, "{port}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Local => f.write_str("local"),
            Value::New => f.write_str("new"),
            Value::Concat(values) => write_joined(f, values, " . "),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Accept => f.write_str("accept"),
            Verdict::Return => f.write_str("return"),
        }
    }
}

fn write_joined<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    separator: &str,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Cmp { key, op, value } => {
                // Masked marks and draws are written with `==`, other keys without.
                let op = match (op, key) {
                    (CmpOp::Ne, _) => " != ",
                    (CmpOp::Eq, Key::Mark(_) | Key::Numgen { .. } | Key::Jhash { .. }) => " == ",
                    (CmpOp::Eq, _) => " ",
                };
                write!(f, "{key}{op}{value}")
            }
            Term::Lookup { keys, set, negated } => {
                write_joined(f, keys, " . ")?;
                f.write_str(if *negated { " != " } else { " " })?;
                match set {
                    SetRef::Named(name) => write!(f, "@{name}"),
                    SetRef::Anonymous(values) => {
                        f.write_str("{ ")?;
                        write_joined(f, values, ", ")?;
                        f.write_str(" }")
                    }
                }
            }
            Term::Vmap { keys, map } => {
                write_joined(f, keys, " . ")?;
                match map {
                    MapRef::Named(name) => write!(f, " vmap @{name}"),
                    MapRef::Anonymous(arms) => {
                        f.write_str(" vmap { ")?;
                        for (i, (value, verdict)) in arms.iter().enumerate() {
                            if i > 0 {
                                f.write_str(", ")?;
                            }
                            write!(f, "{value} : {verdict}")?;
                        }
                        f.write_str(" }")
                    }
                }
            }
            Term::UpdateSet { set, key } => write!(f, "update @{set} {{ {key} }}"),
            Term::MarkSet { op, value } => {
                let op = match op {
                    MarkOp::Or => "|",
                    MarkOp::Xor => "^",
                };
                write!(f, "meta mark set meta mark {op} {value:#x}")
            }
            Term::Dnat {
                addr: IpAddr::V6(addr),
                port,
            } => write!(f, "dnat to [{addr}]:{port}"),
            Term::Dnat { addr, port } => write!(f, "dnat to {addr}:{port}"),
            Term::Masquerade { fully_random } => {
                f.write_str("masquerade")?;
                if *fully_random {
                    f.write_str(" fully-random")?;
                }
                Ok(())
            }
            Term::Reject(reject) => f.write_str(match reject {
                Reject::Default => "reject",
                Reject::TcpReset => "reject with tcp reset",
                Reject::IcmpPortUnreachable => "reject with icmp type port-unreachable",
                Reject::Icmpv6PortUnreachable => "reject with icmpv6 type port-unreachable",
            }),
            Term::Verdict(verdict) => write!(f, "{verdict}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.terms, " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a table block's chains (`\t\t<rule>` lines that are not declarations).
    fn golden_rules() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut rules = Vec::new();
        for entry in std::fs::read_dir(dir).expect("testdata") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            for line in text.lines() {
                let rule = if let Some(rest) = line.strip_prefix("add rule ") {
                    // add rule <family> <table> <chain> <rule>
                    rest.splitn(4, ' ').nth(3).expect("rule").to_string()
                } else if let Some(rule) = line.strip_prefix("\t\t") {
                    let declaration = ["type ", "elements = ", "policy "]
                        .iter()
                        .any(|p| rule.starts_with(p));
                    if declaration || rule.starts_with('\t') {
                        continue;
                    }
                    rule.to_string()
                } else {
                    continue;
                };
                rules.push(rule);
            }
        }
        rules
    }

    #[test]
    fn every_golden_rule_parses_and_prints_back_the_same() {
        let rules = golden_rules();
        assert!(rules.len() > 50, "few golden rules: {}", rules.len());
        for text in rules {
            let rule = Rule::parse(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rule.to_string(), text);
        }
    }

    #[test]
    fn rules_parse_into_their_terms() {
        let rule = Rule::parse(
            "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        )
        .expect("parse");
        assert_eq!(
            rule.terms,
            vec![
                Term::Cmp {
                    key: Key::Addr(Family::V4, AddrField::Daddr),
                    op: CmpOp::Eq,
                    value: Value::Addr("10.96.0.10".parse().expect("ip")),
                },
                Term::Cmp {
                    key: Key::DPort(Some(Protocol::Tcp)),
                    op: CmpOp::Eq,
                    value: Value::Port(80),
                },
                Term::Cmp {
                    key: Key::Addr(Family::V4, AddrField::Saddr),
                    op: CmpOp::Ne,
                    value: Value::Net("10.244.0.0/16".parse().expect("net")),
                },
                Term::Verdict(Verdict::Jump("mark-for-masquerade".into())),
            ]
        );
        let rule =
            Rule::parse("numgen inc mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b }")
                .expect("parse");
        assert_eq!(
            rule.terms,
            vec![Term::Vmap {
                keys: vec![Key::Numgen {
                    mode: NumgenMode::Inc,
                    modulus: 2
                }],
                map: MapRef::Anonymous(vec![
                    (Value::Int(0), Verdict::Goto("endpoint-a".into())),
                    (Value::Int(1), Verdict::Goto("endpoint-b".into())),
                ]),
            }]
        );
    }

    #[test]
    fn ipv6_spellings_parse_and_print_back() {
        for text in [
            "ip6 daddr fd00::a tcp dport 80 ip6 saddr != fd00:10::/64 jump mark-for-masquerade",
            "meta l4proto tcp dnat to [fd00:10::5]:8080",
            "jhash ip6 saddr mod 3 seed 0x5357 == 0 goto endpoint-x",
            "update @affinity-x { ip6 saddr }",
            "ip6 saddr != { 2001:db8::/32, fd00::/8 } drop",
            "reject with icmpv6 type port-unreachable",
            "ip6 daddr . meta l4proto . th dport vmap @service-ips",
        ] {
            let rule = Rule::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rule.to_string(), text);
        }
    }

    #[test]
    fn text_outside_the_language_is_an_error() {
        for text in [
            "",
            "ip daddr 10.0.0.1 counter accept",
            "ip daddr fd00::1 drop",
            "ip6 saddr 10.0.0.1 drop",
            "tcp dport http drop",
            "goto",
            "goto 1bad",
            "dnat to 10.0.0.1",
            "numgen random mod 2 vmap { 0 : goto a, 1 : goto b",
            "ip daddr . th dport 10.0.0.1 drop",
            "meta mark set meta mark & 0x1",
        ] {
            assert!(Rule::parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn elements_verdicts_and_set_declarations_parse() {
        let keys = map_keys("ipv4_addr . inet_proto . inet_service : verdict").expect("keys");
        assert_eq!(
            Value::parse_key("10.96.0.10 . udp . 53", &keys).expect("key"),
            Value::Concat(vec![
                Value::Addr("10.96.0.10".parse().expect("ip")),
                Value::Proto(Protocol::Udp),
                Value::Port(53),
            ])
        );
        assert!(Value::parse_key("10.96.0.10 . udp", &keys).is_err());
        assert!(Value::parse_key("fd00::1 . udp . 53", &keys).is_err());
        assert_eq!(
            Verdict::parse("goto external-ABC-default/web/tcp/http").expect("verdict"),
            Verdict::Goto("external-ABC-default/web/tcp/http".into())
        );
        assert!(Verdict::parse("goto a b").is_err());
        assert_eq!(
            SetDecl::parse("type ipv4_addr; flags dynamic,timeout; timeout 10800s;").expect("set"),
            SetDecl {
                family: Family::V4,
                dynamic: true,
                timeout: Some(10800),
            }
        );
        assert!(SetDecl::parse("type ether_addr;").is_err());
    }
}

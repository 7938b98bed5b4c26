//! Validation of objects on create and update, with kube-apiserver's field paths and messages:
//! the name and format rules of `k8s.io/apimachinery/pkg/util/validation`, `ObjectMeta`
//! validation, and the per-kind rules of `pkg/apis/core/validation`, `pkg/apis/apps/validation`
//! and `pkg/apis/discovery/validation` for the kinds Switchyard serves (Service validation lives
//! in [`crate::service`]). Messages must match Kubernetes byte for byte where possible, because
//! `kubectl` prints them verbatim and tests compare them.
//!
//! Objects arrive as `serde_json::Value`, already defaulted by [`crate::defaults`]. Values that
//! a field error shows are rendered as Go's `%v`/`%q`/`%#v` would render them.
//!
//! References (kubernetes/kubernetes):
//! - <https://github.com/kubernetes/kubernetes/blob/master/staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/core/validation/validation.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/apps/validation/validation.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/discovery/validation/validation.go>

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::k8s::apimachinery::pkg::apis::meta::v1 as metav1;
use crate::resources::ResourceInfo;
use crate::selector::LabelSelector;
use crate::status::{FieldError, FieldErrorType};

// ---------------------------------------------------------------------------------------------
// Go value rendering and JSON access shared by the validation modules.

/// A bad value already rendered the way Go prints it (`[]string{"a"}`, `map[string]string{...}`,
/// struct literals). Its `Debug` writes the text unquoted, so it can be passed wherever
/// [`FieldError::invalid`] expects a value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct GoRepr(pub String);

impl fmt::Debug for GoRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Go's `%#v` of a `[]string` (`[]string(nil)` when empty, as the values come from nil slices).
pub(crate) fn go_string_slice(values: &[String]) -> GoRepr {
    if values.is_empty() {
        return GoRepr("[]string(nil)".to_string());
    }
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    GoRepr(format!("[]string{{{}}}", quoted.join(", ")))
}

/// Go's `%#v` of a `map[string]string` (keys sorted, as fmt prints maps).
pub(crate) fn go_string_map(map: Option<&BTreeMap<String, String>>) -> GoRepr {
    match map {
        None => GoRepr("map[string]string(nil)".to_string()),
        Some(m) => {
            let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
            GoRepr(format!("map[string]string{{{}}}", pairs.join(", ")))
        }
    }
}

/// Go's `%#v` of a `metav1.LabelSelector` held in JSON, as Deployment selector errors show it
/// (`v1.LabelSelector{MatchLabels:map[string]string{"app":"web"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}`).
pub(crate) fn go_label_selector(sel: Option<&Value>) -> GoRepr {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return GoRepr("(*v1.LabelSelector)(nil)".to_string());
    };
    let labels = sel
        .get("matchLabels")
        .filter(|v| !v.is_null())
        .map(|v| string_map(Some(v)));
    let exprs = array(sel, "matchExpressions");
    let exprs = if sel.get("matchExpressions").is_none_or(Value::is_null) {
        "[]v1.LabelSelectorRequirement(nil)".to_string()
    } else {
        let items: Vec<String> = exprs
            .iter()
            .map(|e| {
                let values: Vec<String> = array(e, "values")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                format!(
                    "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{}}}",
                    str_of(e, "key"),
                    str_of(e, "operator"),
                    go_string_slice(&values).0
                )
            })
            .collect();
        format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
    };
    GoRepr(format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_string_map(labels.as_ref()).0
    ))
}

/// The child `key` of an object, treating JSON `null` as absent.
pub(crate) fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// A string child, "" when absent or not a string.
pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// An array child, empty when absent.
pub(crate) fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A `map[string]string` held in JSON (non-string values are skipped).
pub(crate) fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A list of strings held in JSON.
pub(crate) fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Removes what Go's semantic equality ignores (nulls, empty collections, zero scalars), so two
/// JSON documents compare as their decoded Go structs would.
pub(crate) fn semantic(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let x = semantic(x);
                if !is_zero(&x) {
                    out.insert(k.clone(), x);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(semantic).collect()),
        other => other.clone(),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

// ---------------------------------------------------------------------------------------------
// Format rules (k8s.io/apimachinery/pkg/util/validation).

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_MAP_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_MAP_KEY_ERR: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";

/// `validation.RegexError`, including its `',  or '` spacing.
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push('\'');
        s.push_str(e);
        s.push_str("', ");
    }
    s.push_str("regex used for validation is '");
    s.push_str(fmt);
    s.push_str("')");
    s
}

pub fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

pub fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

const IS_NEGATIVE_ERROR: &str = "must be greater than or equal to 0";
const FIELD_IMMUTABLE: &str = "field is immutable";

/// Every byte is allowed, the first and last are alphanumeric.
fn shaped(s: &str, allowed: impl Fn(u8) -> bool, first: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            first(f)
                && (l.is_ascii_lowercase() || l.is_ascii_digit())
                && b.iter().all(|&c| allowed(c))
        }
        _ => false,
    }
}

fn dns_label_ok(s: &str) -> bool {
    shaped(
        s,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
    )
}

fn dns_subdomain_ok(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(dns_label_ok)
}

fn dns1035_ok(s: &str) -> bool {
    shaped(
        s,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
        |c| c.is_ascii_lowercase(),
    )
}

fn qualified_name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `IsDNS1123Label`: a lowercase RFC 1123 label of at most 63 characters.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !dns_label_ok(value) {
        if dns_subdomain_ok(value) {
            // A valid subdomain that is not a label can only be one with dots.
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`: dot-separated RFC 1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !dns_subdomain_ok(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsDNS1035Label`: like a DNS-1123 label but starting with a letter (Service names).
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !dns1035_ok(value) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsQualifiedName`: `[prefix/]name` where the prefix is a DNS subdomain and the name at most
/// 63 alphanumerics, `-`, `_`, `.` (label keys, annotation keys, finalizers).
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !qualified_name_part_ok(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`: empty, or up to 63 alphanumerics, `-`, `_`, `.` starting and ending
/// alphanumeric.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !value.is_empty() && !qualified_name_part_ok(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsValidPortName` (IANA_SVC_NAME): at most 15 of `[-a-z0-9]`, at least one letter, no
/// leading, trailing or doubled hyphen.
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if port.is_empty()
        || !port
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// `IsConfigMapKey`: keys of ConfigMap `data` and `binaryData`.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len_error(253));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(regex_error(
            CONFIG_MAP_KEY_ERR,
            CONFIG_MAP_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    match value {
        "." => errs.push("must not be '.'".to_string()),
        ".." => errs.push("must not be '..'".to_string()),
        v if v.starts_with("..") => errs.push("must not start with '..'".to_string()),
        _ => {}
    }
    errs
}

/// `IsValidPercent`.
fn is_valid_percent(s: &str) -> Vec<String> {
    let ok = s
        .strip_suffix('%')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()));
    if ok {
        Vec::new()
    } else {
        vec![regex_error(
            "a valid percent string must be a numeric string followed by an ending '%'",
            "[0-9]+%",
            &["1%", "93%"],
        )]
    }
}

// ---------------------------------------------------------------------------------------------
// IP addresses, parsed as `netutils.ParseIPSloppy` does (IPv4 octets may carry leading zeros).

fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Leading zeros are accepted and the octet read as decimal, as Go's sloppy parser does.
        let digits = p.trim_start_matches('0');
        if digits.len() > 3 {
            return None;
        }
        *o = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses an IP address the way Kubernetes accepts them. IPv4-mapped IPv6 addresses are returned
/// as IPv4, as Go's `net.IP` treats them.
pub(crate) fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        let v6: Ipv6Addr = s.parse().ok()?;
        return Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        });
    }
    parse_ipv4_sloppy(s).map(IpAddr::V4)
}

/// Parses a CIDR as `netutils.ParseCIDRSloppy`: an address (host bits may be set) and a prefix
/// length no longer than the family's width.
pub(crate) fn parse_cidr_sloppy(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    if bits.is_empty() || !bits.bytes().all(|c| c.is_ascii_digit()) || bits.len() > 3 {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    let ip = if ip.contains(':') {
        IpAddr::V6(ip.parse().ok()?)
    } else {
        IpAddr::V4(parse_ipv4_sloppy(ip)?)
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

pub(crate) fn is_ipv6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(_))
}

/// `validation.IsValidIP`.
pub(crate) fn validate_ip(path: &str, value: &str) -> Vec<FieldError> {
    if parse_ip_sloppy(value).is_none() {
        vec![FieldError::invalid(
            path,
            value,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )]
    } else {
        Vec::new()
    }
}

/// `validation.IsValidCIDR`.
pub(crate) fn validate_cidr(path: &str, value: &str) -> Vec<FieldError> {
    if parse_cidr_sloppy(value).is_none() {
        vec![FieldError::invalid(
            path,
            value,
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )]
    } else {
        Vec::new()
    }
}

fn is_link_local_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_link_local_multicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    }
}

/// `ValidateEndpointIP` / `ValidateNonSpecialIP`: endpoint and external IPs may not be
/// unspecified, loopback, link-local or link-local multicast, because those addresses mean
/// something node-local (e.g. a metadata service) rather than a backend.
pub fn validate_ip_address_for_endpoint(ip: &str, path: &str) -> Vec<FieldError> {
    let Some(addr) = parse_ip_sloppy(ip) else {
        return vec![FieldError::invalid(path, ip, "must be a valid IP address")];
    };
    let mut errs = Vec::new();
    if addr.is_unspecified() {
        errs.push(FieldError::invalid(
            path,
            ip,
            format!("may not be unspecified ({ip})"),
        ));
    }
    if addr.is_loopback() {
        errs.push(FieldError::invalid(
            path,
            ip,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if is_link_local_unicast(&addr) {
        errs.push(FieldError::invalid(
            path,
            ip,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    if is_link_local_multicast(&addr) {
        errs.push(FieldError::invalid(
            path,
            ip,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Small shared checks.

/// `ValidateNonnegativeField`.
pub(crate) fn validate_nonnegative(v: i64, path: &str) -> Vec<FieldError> {
    if v < 0 {
        vec![FieldError::invalid(path, v, IS_NEGATIVE_ERROR)]
    } else {
        Vec::new()
    }
}

/// `ValidateDNS1123Label` on a field.
pub(crate) fn validate_dns1123_label(value: &str, path: &str) -> Vec<FieldError> {
    is_dns1123_label(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, value, m))
        .collect()
}

pub(crate) fn validate_dns1123_subdomain(value: &str, path: &str) -> Vec<FieldError> {
    is_dns1123_subdomain(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, value, m))
        .collect()
}

pub(crate) fn validate_qualified_name(value: &str, path: &str) -> Vec<FieldError> {
    is_qualified_name(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, value, m))
        .collect()
}

/// `v1validation.ValidateLabels`: every key a qualified name, every value a label value; errors
/// name the map itself (no key in the path), as Kubernetes does.
pub(crate) fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        errs.extend(validate_qualified_name(k, path));
        errs.extend(
            is_valid_label_value(v)
                .into_iter()
                .map(|m| FieldError::invalid(path, v.as_str(), m)),
        );
    }
    errs
}

/// `field.TooMany`.
pub(crate) fn too_many(path: &str, actual: usize, max: usize) -> FieldError {
    FieldError {
        kind: FieldErrorType::TooMany,
        field: path.to_string(),
        value: Some(actual.to_string()),
        detail: format!(
            "must have at most {max} {}",
            if max == 1 { "item" } else { "items" }
        ),
    }
}

/// `field.TooLong` as kube-apiserver 1.33 words it (value omitted).
pub(crate) fn too_long(path: &str, max: usize) -> FieldError {
    FieldError {
        kind: FieldErrorType::TooLong,
        field: path.to_string(),
        value: None,
        detail: format!(
            "may not be more than {max} {}",
            if max == 1 { "byte" } else { "bytes" }
        ),
    }
}

const SUPPORTED_PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// Protocol of a port: required, one of TCP/UDP/SCTP.
pub(crate) fn validate_protocol(port: &Value, path: &str) -> Vec<FieldError> {
    let proto = str_of(port, "protocol");
    if proto.is_empty() {
        vec![FieldError::required(child(path, "protocol"), "")]
    } else if !SUPPORTED_PROTOCOLS.contains(&proto) {
        vec![FieldError::not_supported(
            child(path, "protocol"),
            proto,
            SUPPORTED_PROTOCOLS,
        )]
    } else {
        Vec::new()
    }
}

/// `IsValidPortNum` of an integer field (absent counts as 0).
pub(crate) fn validate_port_num(v: &Value, key: &str, path: &str) -> Vec<FieldError> {
    let n = v.get(key).and_then(Value::as_i64).unwrap_or(0);
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            child(path, key),
            n,
            inclusive_range_error(1, 65535),
        )]
    }
}

// ---------------------------------------------------------------------------------------------
// ObjectMeta.

/// Which name rule a resource's `metadata.name` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameRule {
    Subdomain,
    Dns1123Label,
    Dns1035Label,
}

fn name_rule_for(resource: &ResourceInfo) -> NameRule {
    match (resource.group, resource.kind) {
        // ValidateNamespaceName is NameIsDNSLabel; ValidateServiceName is NameIsDNS1035Label
        // (a Service name becomes a DNS label and an environment variable prefix).
        ("", "Namespace") => NameRule::Dns1123Label,
        ("", "Service") => NameRule::Dns1035Label,
        _ => NameRule::Subdomain,
    }
}

/// `maskTrailingDash`: generated names get a suffix, so a trailing dash is acceptable in a
/// prefix. (Kubernetes replaces the last *two* characters with `a`; kept for fidelity.)
fn mask_trailing_dash(name: &str) -> String {
    if name.len() > 1 && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 2])
    } else {
        name.to_string()
    }
}

fn check_name(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let name = if prefix {
        mask_trailing_dash(name)
    } else {
        name.to_string()
    };
    match rule {
        NameRule::Subdomain => is_dns1123_subdomain(&name),
        NameRule::Dns1123Label => is_dns1123_label(&name),
        NameRule::Dns1035Label => is_dns1035_label(&name),
    }
}

fn is_custom_resource(resource: &ResourceInfo) -> bool {
    resource.group.ends_with("metallb.io")
}

const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// `ValidateObjectMeta` for a create: name (required; the caller has already generated it from
/// `generateName`), namespace iff namespaced, labels, annotations (keys and 256 KiB total),
/// owner references and finalizers.
pub fn validate_object_meta(obj: &Value, resource: &ResourceInfo) -> Vec<FieldError> {
    validate_meta(
        obj,
        name_rule_for(resource),
        resource.namespaced,
        !is_custom_resource(resource),
    )
}

pub(crate) fn validate_meta(
    obj: &Value,
    rule: NameRule,
    namespaced: bool,
    builtin: bool,
) -> Vec<FieldError> {
    let empty = Value::Null;
    let meta = obj.get("metadata").unwrap_or(&empty);
    let mut errs = Vec::new();

    let generate_name = str_of(meta, "generateName");
    if !generate_name.is_empty() {
        for m in check_name(rule, generate_name, true) {
            errs.push(FieldError::invalid(
                "metadata.generateName",
                generate_name,
                m,
            ));
        }
    }
    let name = str_of(meta, "name");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in check_name(rule, name, false) {
            errs.push(FieldError::invalid("metadata.name", name, m));
        }
    }

    let namespace = str_of(meta, "namespace");
    if namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            for m in is_dns1123_label(namespace) {
                errs.push(FieldError::invalid("metadata.namespace", namespace, m));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }

    if let Some(g) = meta.get("generation").and_then(Value::as_i64) {
        errs.extend(validate_nonnegative(g, "metadata.generation"));
    }

    errs.extend(validate_labels(
        &string_map(get(meta, "labels")),
        "metadata.labels",
    ));

    let annotations = string_map(get(meta, "annotations"));
    let mut total = 0usize;
    for (k, v) in &annotations {
        // Annotation keys are qualified names, compared case-insensitively.
        for m in is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid("metadata.annotations", k.as_str(), m));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(too_long(
            "metadata.annotations",
            TOTAL_ANNOTATION_SIZE_LIMIT,
        ));
    }

    errs.extend(validate_owner_references(array(meta, "ownerReferences")));

    let finalizers = string_list(get(meta, "finalizers"));
    for f in &finalizers {
        errs.extend(validate_qualified_name(f, "metadata.finalizers"));
    }
    if finalizers.iter().any(|f| f == "orphan")
        && finalizers.iter().any(|f| f == "foregroundDeletion")
    {
        errs.push(FieldError::invalid(
            "metadata.finalizers",
            go_string_slice(&finalizers),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    if builtin {
        // Built-in resources additionally require unqualified finalizer names to be standard.
        for (i, f) in finalizers.iter().enumerate() {
            let path = index("metadata.finalizers", i);
            errs.extend(validate_qualified_name(f, &path));
            if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
                errs.push(FieldError::invalid(
                    path,
                    f.as_str(),
                    "name is neither a standard finalizer name nor is it fully qualified",
                ));
            }
        }
    }
    errs
}

fn validate_owner_references(refs: &[Value]) -> Vec<FieldError> {
    let path = "metadata.ownerReferences";
    let mut errs = Vec::new();
    let mut first_controller: Option<String> = None;
    for r in refs {
        let api_version = str_of(r, "apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldError::invalid(
                child(path, "apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        for key in ["kind", "name", "uid"] {
            if str_of(r, key).is_empty() {
                errs.push(FieldError::invalid(
                    child(path, key),
                    "",
                    "must not be empty",
                ));
            }
        }
        if api_version == "v1" && str_of(r, "kind") == "Event" {
            errs.push(FieldError::invalid(
                path,
                GoRepr("v1.OwnerReference{...}".into()),
                "/v1, Kind=Event is disallowed from being an owner",
            ));
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let current = format!("{}/{}", str_of(r, "kind"), str_of(r, "name"));
            match &first_controller {
                Some(first) => errs.push(FieldError::invalid(
                    path,
                    GoRepr(format!("[]v1.OwnerReference{{...}} ({} items)", refs.len())),
                    format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                )),
                None => first_controller = Some(current),
            }
        }
    }
    errs
}

/// Go's `time.Time.String()` of an RFC 3339 timestamp, as immutable-timestamp errors show it.
fn go_time(s: &str) -> GoRepr {
    match s.parse::<jiff::Timestamp>() {
        Ok(t) => GoRepr(t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()),
        Err(_) => GoRepr(s.to_string()),
    }
}

/// `ValidateObjectMetaUpdate`: name, namespace, uid and creationTimestamp may not change; no
/// finalizer may be added once deletion started. A missing uid or creationTimestamp in the new
/// object is not an error: kube-apiserver copies them from the stored object before validating.
pub fn validate_object_meta_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let empty = Value::Null;
    let nm = new.get("metadata").unwrap_or(&empty);
    let om = old.get("metadata").unwrap_or(&empty);
    let mut errs = Vec::new();
    for key in ["name", "namespace"] {
        let (n, o) = (str_of(nm, key), str_of(om, key));
        if n != o {
            errs.push(FieldError::invalid(
                format!("metadata.{key}"),
                n,
                FIELD_IMMUTABLE,
            ));
        }
    }
    let (nu, ou) = (str_of(nm, "uid"), str_of(om, "uid"));
    if !nu.is_empty() && nu != ou {
        errs.push(FieldError::invalid("metadata.uid", nu, FIELD_IMMUTABLE));
    }
    let (nc, oc) = (
        str_of(nm, "creationTimestamp"),
        str_of(om, "creationTimestamp"),
    );
    if !nc.is_empty()
        && !oc.is_empty()
        && nc.parse::<jiff::Timestamp>().ok() != oc.parse::<jiff::Timestamp>().ok()
    {
        errs.push(FieldError::invalid(
            "metadata.creationTimestamp",
            go_time(nc),
            FIELD_IMMUTABLE,
        ));
    }
    if get(om, "deletionTimestamp").is_some() {
        let old_f: BTreeSet<String> = string_list(get(om, "finalizers")).into_iter().collect();
        let extra: Vec<String> = string_list(get(nm, "finalizers"))
            .into_iter()
            .filter(|f| !old_f.contains(f))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !extra.is_empty() {
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers {}",
                    go_string_slice(&extra).0
                ),
            ));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

/// Validates an object about to be created (already defaulted, name already generated).
pub fn validate_create(resource: &ResourceInfo, obj: &Value) -> Vec<FieldError> {
    if resource.group.is_empty() && resource.kind == "Service" {
        return crate::service::validate_service(obj, None);
    }
    let mut errs = validate_object_meta(obj, resource);
    errs.extend(validate_kind(resource, obj));
    errs
}

/// Validates an update of `old` into `new` (both defaulted).
pub fn validate_update(resource: &ResourceInfo, new: &Value, old: &Value) -> Vec<FieldError> {
    if resource.group.is_empty() && resource.kind == "Service" {
        return crate::service::validate_service(new, Some(old));
    }
    let mut errs = validate_object_meta_update(new, old);
    errs.extend(validate_object_meta(new, resource));
    errs.extend(validate_kind(resource, new));
    let empty = Value::Null;
    let (ns, os) = (
        new.get("spec").unwrap_or(&empty),
        old.get("spec").unwrap_or(&empty),
    );
    match (resource.group, resource.kind) {
        ("", "Pod") => errs.extend(validate_pod_update(ns, os)),
        ("apps", "Deployment" | "ReplicaSet") => {
            // apps/v1 forbids changing the selector, which would orphan existing pods.
            let (nsel, osel) = (get(ns, "selector"), get(os, "selector"));
            if nsel.map(semantic) != osel.map(semantic) {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    go_label_selector(nsel),
                    FIELD_IMMUTABLE,
                ));
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let (n, o) = (str_of(new, "addressType"), str_of(old, "addressType"));
            if n != o {
                errs.push(FieldError::invalid("addressType", n, FIELD_IMMUTABLE));
            }
        }
        ("", "Node") => {
            // Pod CIDRs may be assigned once (from "" to valid) but never changed.
            let (n, o) = (pod_cidrs(ns), pod_cidrs(os));
            if !o.is_empty() && n != o {
                errs.push(FieldError::forbidden(
                    "spec.podCIDRs",
                    "node updates may not change podCIDR except from \"\" to valid",
                ));
            }
        }
        _ => {}
    }
    errs
}

fn validate_kind(resource: &ResourceInfo, obj: &Value) -> Vec<FieldError> {
    let empty = Value::Null;
    let spec = obj.get("spec").unwrap_or(&empty);
    match (resource.group, resource.kind) {
        ("", "Pod") => validate_pod_spec(spec, "spec", true),
        ("apps", "Deployment") => validate_deployment_spec(spec),
        ("apps", "ReplicaSet") => validate_replica_set_spec(spec),
        ("", "Endpoints") => validate_endpoints(obj),
        ("discovery.k8s.io", "EndpointSlice") => validate_endpoint_slice(obj),
        ("", "Node") => validate_node(spec),
        ("", "ConfigMap") => validate_config_map(obj),
        ("metallb.io", "IPAddressPool") => validate_ip_address_pool(spec),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates.

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];

fn validate_container_ports(ports: &[Value], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = index(path, i);
        let name = str_of(port, "name");
        if !name.is_empty() {
            let msgs = is_valid_port_name(name);
            if !msgs.is_empty() {
                errs.extend(
                    msgs.into_iter()
                        .map(|m| FieldError::invalid(child(&p, "name"), name, m)),
                );
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(child(&p, "name"), name));
            }
        }
        if port
            .get("containerPort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
        {
            errs.push(FieldError::required(child(&p, "containerPort"), ""));
        } else {
            errs.extend(validate_port_num(port, "containerPort", &p));
        }
        if port.get("hostPort").and_then(Value::as_i64).unwrap_or(0) != 0 {
            errs.extend(validate_port_num(port, "hostPort", &p));
        }
        if port.get("protocol").is_some() {
            errs.extend(validate_protocol(port, &p));
        }
    }
    errs
}

/// `validateContainerCommon`: name, image, termination message policy, ports, pull policy.
/// Fields that defaulting always fills are only checked when present.
fn validate_container(c: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = str_of(c, "name");
    if name.is_empty() {
        errs.push(FieldError::required(child(path, "name"), ""));
    } else {
        errs.extend(validate_dns1123_label(name, &child(path, "name")));
    }
    if str_of(c, "image").is_empty() {
        errs.push(FieldError::required(child(path, "image"), ""));
    }
    if c.get("terminationMessagePolicy").is_some() {
        let tmp = str_of(c, "terminationMessagePolicy");
        if tmp.is_empty() {
            errs.push(FieldError::required(
                child(path, "terminationMessagePolicy"),
                "",
            ));
        } else if !TERMINATION_MESSAGE_POLICIES.contains(&tmp) {
            errs.push(FieldError::not_supported(
                child(path, "terminationMessagePolicy"),
                tmp,
                TERMINATION_MESSAGE_POLICIES,
            ));
        }
    }
    errs.extend(validate_container_ports(
        array(c, "ports"),
        &child(path, "ports"),
    ));
    if c.get("imagePullPolicy").is_some() {
        let policy = str_of(c, "imagePullPolicy");
        if policy.is_empty() {
            errs.push(FieldError::required(child(path, "imagePullPolicy"), ""));
        } else if !PULL_POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(
                child(path, "imagePullPolicy"),
                policy,
                PULL_POLICIES,
            ));
        }
    }
    errs
}

/// `ValidatePodSpec` for the rules Switchyard enforces. `is_pod` distinguishes a Pod from a
/// template embedded in a workload (host ports must then equal container ports on the host
/// network only for Pods).
pub(crate) fn validate_pod_spec(spec: &Value, path: &str, is_pod: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();

    let mut volume_names = BTreeSet::new();
    for (i, v) in array(spec, "volumes").iter().enumerate() {
        let p = child(&index(&child(path, "volumes"), i), "name");
        let name = str_of(v, "name");
        if name.is_empty() {
            errs.push(FieldError::required(p.as_str(), ""));
        } else {
            errs.extend(validate_dns1123_label(name, &p));
        }
        if !volume_names.insert(name) {
            errs.push(FieldError::duplicate(p, name));
        }
    }

    let containers_path = child(path, "containers");
    let containers = array(spec, "containers");
    let mut names: BTreeSet<&str> = BTreeSet::new();
    if containers.is_empty() {
        errs.push(FieldError::required(containers_path.as_str(), ""));
    }
    for (i, c) in containers.iter().enumerate() {
        let p = index(&containers_path, i);
        errs.extend(validate_container(c, &p));
        let name = str_of(c, "name");
        if !names.insert(name) {
            errs.push(FieldError::duplicate(child(&p, "name"), name));
        }
    }
    let init_path = child(path, "initContainers");
    for (i, c) in array(spec, "initContainers").iter().enumerate() {
        let p = index(&init_path, i);
        errs.extend(validate_container(c, &p));
        let name = str_of(c, "name");
        if !names.insert(name) {
            errs.push(FieldError::duplicate(child(&p, "name"), name));
        }
    }

    let restart = str_of(spec, "restartPolicy");
    if restart.is_empty() {
        errs.push(FieldError::required(child(path, "restartPolicy"), ""));
    } else if !RESTART_POLICIES.contains(&restart) {
        errs.push(FieldError::not_supported(
            child(path, "restartPolicy"),
            restart,
            RESTART_POLICIES,
        ));
    }
    let dns = str_of(spec, "dnsPolicy");
    if dns.is_empty() {
        errs.push(FieldError::required(child(path, "dnsPolicy"), ""));
    } else if !DNS_POLICIES.contains(&dns) {
        errs.push(FieldError::not_supported(
            child(path, "dnsPolicy"),
            dns,
            DNS_POLICIES,
        ));
    }
    if dns == "None" && get(spec, "dnsConfig").is_none() {
        errs.push(FieldError::required(
            child(path, "dnsConfig"),
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ));
    }

    errs.extend(validate_labels(
        &string_map(get(spec, "nodeSelector")),
        &child(path, "nodeSelector"),
    ));
    for key in ["nodeName", "serviceAccountName"] {
        let v = str_of(spec, key);
        if !v.is_empty() {
            errs.extend(validate_dns1123_subdomain(v, &child(path, key)));
        }
    }
    for key in ["hostname", "subdomain"] {
        let v = str_of(spec, key);
        if !v.is_empty() {
            errs.extend(validate_dns1123_label(v, &child(path, key)));
        }
    }
    if let Some(ads) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if !(1..=i64::from(i32::MAX)).contains(&ads) {
            errs.push(FieldError::invalid(
                child(path, "activeDeadlineSeconds"),
                ads,
                inclusive_range_error(1, i64::from(i32::MAX)),
            ));
        }
    }

    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for (i, c) in containers.iter().enumerate() {
            for (j, port) in array(c, "ports").iter().enumerate() {
                let hp = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                let cp = port
                    .get("containerPort")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if (is_pod || hp != 0) && hp != cp {
                    errs.push(FieldError::invalid(
                        child(
                            &index(&child(&index(&containers_path, i), "ports"), j),
                            "hostPort",
                        ),
                        hp,
                        "must match `containerPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
    errs
}

/// The fields a Pod update may change, in kube-apiserver's wording.
const UPDATABLE_POD_SPEC_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`: a Pod's spec is immutable except container images, a lowered
/// activeDeadlineSeconds, added tolerations and removed scheduling gates.
fn validate_pod_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for key in ["containers", "initContainers"] {
        let (nc, oc) = (array(new, key), array(old, key));
        let path = child("spec", key);
        if nc.len() != oc.len() {
            errs.push(FieldError::forbidden(
                path,
                "pod updates may not add or remove containers",
            ));
            return errs;
        }
        for (i, c) in nc.iter().enumerate() {
            let image = str_of(c, "image");
            let p = child(&index(&path, i), "image");
            if image.is_empty() {
                errs.push(FieldError::required(p.as_str(), ""));
            }
            if image.trim() != image {
                errs.push(FieldError::invalid(
                    p,
                    image,
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }

    let path = "spec.activeDeadlineSeconds";
    match (
        new.get("activeDeadlineSeconds").and_then(Value::as_i64),
        old.get("activeDeadlineSeconds").and_then(Value::as_i64),
    ) {
        (Some(n), _) if n < 0 || n > i64::from(i32::MAX) => {
            errs.push(FieldError::invalid(
                path,
                n,
                inclusive_range_error(0, i64::from(i32::MAX)),
            ));
            return errs;
        }
        (Some(n), Some(o)) if o < n => {
            errs.push(FieldError::invalid(
                path,
                n,
                "must be less than or equal to previous value",
            ));
            return errs;
        }
        (None, Some(_)) => {
            errs.push(FieldError::invalid(
                path,
                GoRepr("null".into()),
                "must not update from a positive integer to nil value",
            ));
        }
        _ => {}
    }

    // Existing tolerations must survive, except for their tolerationSeconds.
    let new_tols = array(new, "tolerations");
    for o in array(old, "tolerations") {
        let found = new_tols.iter().any(|n| {
            let mut o = semantic(o);
            let n = semantic(n);
            if let (Some(om), Some(secs)) = (o.as_object_mut(), n.get("tolerationSeconds")) {
                om.insert("tolerationSeconds".into(), secs.clone());
            } else if let Some(om) = o.as_object_mut() {
                om.remove("tolerationSeconds");
            }
            o == n
        });
        if !found {
            errs.push(FieldError::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }

    let mut munged = new.clone();
    if let Some(m) = munged.as_object_mut() {
        for key in ["containers", "initContainers"] {
            if let Some(cs) = m.get_mut(key).and_then(Value::as_array_mut) {
                for (i, c) in cs.iter_mut().enumerate() {
                    let old_image = array(old, key).get(i).and_then(|o| o.get("image")).cloned();
                    if let Some(cm) = c.as_object_mut() {
                        match old_image {
                            Some(img) => cm.insert("image".into(), img),
                            None => cm.remove("image"),
                        };
                    }
                }
            }
        }
        for key in ["activeDeadlineSeconds", "schedulingGates", "tolerations"] {
            match old.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
        let old_grace = old
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        if old_grace.is_some_and(|g| g < 0)
            && m.get("terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(1)
        {
            m.insert(
                "terminationGracePeriodSeconds".into(),
                old["terminationGracePeriodSeconds"].clone(),
            );
        }
    }
    let (munged, old) = (semantic(&munged), semantic(old));
    if munged != old {
        let mut diff = Vec::new();
        json_diff("spec", &old, &munged, &mut diff);
        errs.push(FieldError::forbidden(
            "spec",
            format!(
                "pod updates may not change fields other than {UPDATABLE_POD_SPEC_FIELDS}\n{}",
                diff.join("\n")
            ),
        ));
    }
    errs
}

/// A line-per-leaf rendering of what changed between two JSON documents (kube-apiserver prints a
/// Go `cmp.Diff`; this carries the same information).
fn json_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                let p = child(path, k);
                match (o.get(k), n.get(k)) {
                    (Some(a), Some(b)) => json_diff(&p, a, b, out),
                    (Some(a), None) => out.push(format!("- {p}: {a}")),
                    (None, Some(b)) => out.push(format!("+ {p}: {b}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                json_diff(&index(path, i), a, b, out);
            }
        }
        (a, b) if a != b => {
            out.push(format!("- {path}: {a}"));
            out.push(format!("+ {path}: {b}"));
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Deployments and ReplicaSets.

/// `ValidateLabelSelector` (strict): matchLabels are labels; expressions have valid keys and
/// values consistent with their operator.
fn validate_label_selector(sel: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = validate_labels(
        &string_map(get(sel, "matchLabels")),
        &child(path, "matchLabels"),
    );
    for (i, e) in array(sel, "matchExpressions").iter().enumerate() {
        let p = index(&child(path, "matchExpressions"), i);
        let values = string_list(get(e, "values"));
        match str_of(e, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(FieldError::required(
                        child(&p, "values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(FieldError::forbidden(
                        child(&p, "values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => errs.push(FieldError::invalid(
                child(&p, "operator"),
                op,
                "not a valid selector operator",
            )),
        }
        errs.extend(validate_qualified_name(str_of(e, "key"), &child(&p, "key")));
        for (j, v) in values.iter().enumerate() {
            let vp = index(&child(&p, "values"), j);
            errs.extend(
                is_valid_label_value(v)
                    .into_iter()
                    .map(|m| FieldError::invalid(vp.as_str(), v.as_str(), m)),
            );
        }
    }
    errs
}

/// Selector presence, non-emptiness and the template's agreement with it, shared by Deployments
/// and ReplicaSets (`ValidatePodTemplateSpecForReplicaSet`).
fn validate_selector_and_template(spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let sel_value = get(spec, "selector");
    let selector = match sel_value {
        None => {
            errs.push(FieldError::required("spec.selector", ""));
            None
        }
        Some(sel) => {
            errs.extend(validate_label_selector(sel, "spec.selector"));
            if string_map(get(sel, "matchLabels")).is_empty()
                && array(sel, "matchExpressions").is_empty()
            {
                // Kubernetes uses the Deployment wording for ReplicaSets too.
                errs.push(FieldError::invalid(
                    "spec.selector",
                    go_label_selector(Some(sel)),
                    "empty selector is invalid for deployment",
                ));
            }
            match serde_json::from_value::<metav1::LabelSelector>(sel.clone())
                .ok()
                .map(|s| LabelSelector::from_metav1(&s))
            {
                Some(Ok(s)) => Some(s),
                _ => {
                    errs.push(FieldError::invalid(
                        "spec.selector",
                        go_label_selector(Some(sel)),
                        "invalid label selector",
                    ));
                    return errs;
                }
            }
        }
    };

    let empty = Value::Null;
    let template = spec.get("template").unwrap_or(&empty);
    let tmeta = template.get("metadata").unwrap_or(&empty);
    let labels = get(tmeta, "labels").map(|l| string_map(Some(l)));
    // A missing selector matches nothing (metav1.LabelSelectorAsSelector(nil) is Nothing).
    let matches = match &selector {
        None => false,
        Some(s) => s.is_everything() || s.matches(labels.as_ref().unwrap_or(&BTreeMap::new())),
    };
    if !matches {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            go_string_map(labels.as_ref()),
            "`selector` does not match template `labels`",
        ));
    }
    // ValidatePodTemplateSpec names template labels `spec.template.labels`, without `metadata`.
    errs.extend(validate_labels(
        labels.as_ref().unwrap_or(&BTreeMap::new()),
        "spec.template.labels",
    ));
    for k in string_map(get(tmeta, "annotations")).keys() {
        for m in is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid(
                "spec.template.annotations",
                k.as_str(),
                m,
            ));
        }
    }
    let tspec = template.get("spec").unwrap_or(&empty);
    errs.extend(validate_pod_spec(tspec, "spec.template.spec", false));
    let restart = str_of(tspec, "restartPolicy");
    if restart != "Always" {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            restart,
            &["Always"],
        ));
    }
    if get(tspec, "activeDeadlineSeconds").is_some() {
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
    errs
}

fn int_field(spec: &Value, key: &str) -> Option<i64> {
    spec.get(key).and_then(Value::as_i64)
}

fn validate_replicas_and_min_ready(spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(r) = int_field(spec, "replicas") {
        errs.extend(validate_nonnegative(r, "spec.replicas"));
    }
    if let Some(m) = int_field(spec, "minReadySeconds") {
        errs.extend(validate_nonnegative(m, "spec.minReadySeconds"));
    }
    errs
}

/// Go's `%#v` of an `intstr.IntOrString`.
fn go_int_or_string(v: &Value) -> GoRepr {
    match v {
        Value::String(s) => GoRepr(format!(
            "intstr.IntOrString{{Type:1, IntVal:0, StrVal:{s:?}}}"
        )),
        other => GoRepr(format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        )),
    }
}

/// The value of an int-or-percent and whether it was a percentage.
fn int_or_percent(v: &Value) -> (i64, bool) {
    match v {
        Value::String(s) => (s.trim_end_matches('%').parse().unwrap_or(0), true),
        other => (other.as_i64().unwrap_or(0), false),
    }
}

fn validate_positive_int_or_percent(v: &Value, path: &str) -> Vec<FieldError> {
    match v {
        Value::String(s) => is_valid_percent(s)
            .into_iter()
            .map(|m| FieldError::invalid(path, go_int_or_string(v), m))
            .collect(),
        Value::Number(n) => validate_nonnegative(n.as_i64().unwrap_or(0), path),
        _ => vec![FieldError::invalid(
            path,
            go_int_or_string(v),
            "must be an integer or percentage (e.g '5%')",
        )],
    }
}

fn validate_deployment_strategy(strategy: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = "spec.strategy";
    match str_of(strategy, "type") {
        "Recreate" => {
            if get(strategy, "rollingUpdate").is_some() {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => match get(strategy, "rollingUpdate") {
            None => errs.push(FieldError::required(
                "spec.strategy.rollingUpdate",
                "this should be defaulted and never be nil",
            )),
            Some(ru) => {
                let zero = Value::from(0);
                let mu = get(ru, "maxUnavailable").unwrap_or(&zero);
                let ms = get(ru, "maxSurge").unwrap_or(&zero);
                errs.extend(validate_positive_int_or_percent(
                    mu,
                    "spec.strategy.rollingUpdate.maxUnavailable",
                ));
                errs.extend(validate_positive_int_or_percent(
                    ms,
                    "spec.strategy.rollingUpdate.maxSurge",
                ));
                if int_or_percent(mu).0 == 0 && int_or_percent(ms).0 == 0 {
                    errs.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        go_int_or_string(mu),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
                let (value, percent) = int_or_percent(mu);
                if percent && value > 100 {
                    errs.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        go_int_or_string(mu),
                        "must not be greater than 100%",
                    ));
                }
            }
        },
        other => errs.push(FieldError::not_supported(
            path,
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
    errs
}

/// `ValidateDeploymentSpec`.
fn validate_deployment_spec(spec: &Value) -> Vec<FieldError> {
    let mut errs = validate_replicas_and_min_ready(spec);
    errs.extend(validate_selector_and_template(spec));
    let empty = Value::Null;
    errs.extend(validate_deployment_strategy(
        spec.get("strategy").unwrap_or(&empty),
    ));
    if let Some(r) = int_field(spec, "revisionHistoryLimit") {
        errs.extend(validate_nonnegative(r, "spec.revisionHistoryLimit"));
    }
    if let Some(p) = int_field(spec, "progressDeadlineSeconds") {
        if p <= 0 {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                p,
                "must be greater than zero",
            ));
        }
        if p <= int_field(spec, "minReadySeconds").unwrap_or(0) {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                p,
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

/// `ValidateReplicaSetSpec`.
fn validate_replica_set_spec(spec: &Value) -> Vec<FieldError> {
    let mut errs = validate_replicas_and_min_ready(spec);
    errs.extend(validate_selector_and_template(spec));
    errs
}

// ---------------------------------------------------------------------------------------------
// Endpoints and EndpointSlices.

/// `validateEndpointAddress`.
fn validate_endpoint_address(addr: &Value, path: &str) -> Vec<FieldError> {
    let ip = str_of(addr, "ip");
    let ip_path = child(path, "ip");
    let mut errs = validate_ip(&ip_path, ip);
    let hostname = str_of(addr, "hostname");
    if !hostname.is_empty() {
        errs.extend(validate_dns1123_label(hostname, &child(path, "hostname")));
    }
    if let Some(node) = addr.get("nodeName").and_then(Value::as_str) {
        errs.extend(validate_dns1123_subdomain(node, &child(path, "nodeName")));
    }
    if errs.is_empty() {
        errs.extend(validate_ip_address_for_endpoint(ip, &ip_path));
    }
    errs
}

/// `ValidateEndpoints`.
fn validate_endpoints(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ss) in array(obj, "subsets").iter().enumerate() {
        let p = index("subsets", i);
        let (addrs, not_ready) = (array(ss, "addresses"), array(ss, "notReadyAddresses"));
        if addrs.is_empty() && not_ready.is_empty() {
            errs.push(FieldError::required(
                p.as_str(),
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            errs.extend(validate_endpoint_address(
                a,
                &index(&child(&p, "addresses"), j),
            ));
        }
        for (j, a) in not_ready.iter().enumerate() {
            errs.extend(validate_endpoint_address(
                a,
                &index(&child(&p, "notReadyAddresses"), j),
            ));
        }
        let ports = array(ss, "ports");
        for (j, port) in ports.iter().enumerate() {
            let pp = index(&child(&p, "ports"), j);
            let name = str_of(port, "name");
            if ports.len() > 1 && name.is_empty() {
                errs.push(FieldError::required(child(&pp, "name"), ""));
            } else if !name.is_empty() {
                errs.extend(validate_dns1123_label(name, &child(&pp, "name")));
            }
            errs.extend(validate_port_num(port, "port", &pp));
            errs.extend(validate_protocol(port, &pp));
            if let Some(ap) = port.get("appProtocol").and_then(Value::as_str) {
                errs.extend(validate_qualified_name(ap, &child(&pp, "appProtocol")));
            }
        }
    }
    errs
}

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];

/// `IsFullyQualifiedDomainName`.
fn validate_fqdn(path: &str, name: &str) -> Vec<FieldError> {
    if name.is_empty() {
        return vec![FieldError::required(path, "")];
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let errs = is_dns1123_subdomain(name);
    if !errs.is_empty() {
        return vec![FieldError::invalid(path, name, errs.join(","))];
    }
    if name.split('.').count() < 2 {
        return vec![FieldError::invalid(
            path,
            name,
            "should be a domain with at least two segments separated by dots",
        )];
    }
    Vec::new()
}

/// `ValidateEndpointSlice`: address type, at most 1000 endpoints of 1-100 addresses valid for
/// the type, at most 100 ports with unique names.
fn validate_endpoint_slice(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let address_type = str_of(obj, "addressType");
    if address_type.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !ADDRESS_TYPES.contains(&address_type) {
        errs.push(FieldError::not_supported(
            "addressType",
            address_type,
            ADDRESS_TYPES,
        ));
    }

    let endpoints = array(obj, "endpoints");
    if endpoints.len() > 1000 {
        errs.push(too_many("endpoints", endpoints.len(), 1000));
    } else {
        for (i, ep) in endpoints.iter().enumerate() {
            let p = index("endpoints", i);
            let ap = child(&p, "addresses");
            let addrs = array(ep, "addresses");
            if addrs.is_empty() {
                errs.push(FieldError::required(
                    ap.as_str(),
                    "must contain at least 1 address",
                ));
            } else if addrs.len() > 100 {
                errs.push(too_many(&ap, addrs.len(), 100));
            }
            for (j, a) in addrs.iter().enumerate() {
                let a = a.as_str().unwrap_or("");
                let path = index(&ap, j);
                match address_type {
                    "IPv4" | "IPv6" => {
                        let v6 = address_type == "IPv6";
                        match parse_ip_sloppy(a) {
                            Some(ip) if is_ipv6(&ip) == v6 => {
                                errs.extend(validate_ip_address_for_endpoint(a, &path))
                            }
                            _ => errs.push(FieldError::invalid(
                                path,
                                a,
                                if v6 {
                                    "must be a valid IPv6 address"
                                } else {
                                    "must be a valid IPv4 address"
                                },
                            )),
                        }
                    }
                    "FQDN" => errs.extend(validate_fqdn(&path, a)),
                    _ => {}
                }
            }
            if let Some(node) = ep.get("nodeName").and_then(Value::as_str) {
                errs.extend(validate_dns1123_subdomain(node, &child(&p, "nodeName")));
            }
            if let Some(h) = ep.get("hostname").and_then(Value::as_str) {
                errs.extend(validate_dns1123_label(h, &child(&p, "hostname")));
            }
        }
    }

    let ports = array(obj, "ports");
    if ports.len() > 100 {
        errs.push(too_many("ports", ports.len(), 100));
        return errs;
    }
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = index("ports", i);
        let name = str_of(port, "name");
        if !name.is_empty() {
            errs.extend(validate_dns1123_label(name, &child(&p, "name")));
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(child(&p, "name"), name));
        }
        if port.get("port").is_some_and(|v| !v.is_null()) {
            errs.extend(validate_port_num(port, "port", &p));
        }
        errs.extend(validate_protocol(port, &p));
        if let Some(ap) = port.get("appProtocol").and_then(Value::as_str) {
            errs.extend(validate_qualified_name(ap, &child(&p, "appProtocol")));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Nodes, ConfigMaps, MetalLB.

/// `spec.podCIDRs`, or the legacy singular `spec.podCIDR` the v1 conversion folds into it.
fn pod_cidrs(spec: &Value) -> Vec<String> {
    let plural = string_list(get(spec, "podCIDRs"));
    if plural.is_empty() {
        let single = str_of(spec, "podCIDR");
        if single.is_empty() {
            Vec::new()
        } else {
            vec![single.to_string()]
        }
    } else {
        plural
    }
}

fn validate_node(spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let cidrs = pod_cidrs(spec);
    for (i, c) in cidrs.iter().enumerate() {
        errs.extend(validate_cidr(&index("spec.podCIDRs", i), c));
    }
    if errs.is_empty() && cidrs.len() > 1 {
        let v6: Vec<bool> = cidrs
            .iter()
            .filter_map(|c| parse_cidr_sloppy(c))
            .map(|(ip, _)| is_ipv6(&ip))
            .collect();
        if cidrs.len() > 2 || v6[0] == v6[1] {
            errs.push(FieldError::invalid(
                "spec.podCIDRs",
                go_string_slice(&cidrs),
                "may specify no more than one CIDR for each IP family",
            ));
        }
    }
    errs
}

const MAX_CONFIG_MAP_SIZE: usize = 1024 * 1024;

/// `ValidateConfigMap`: keys are config keys, no key in both `data` and `binaryData`, 1 MiB total.
fn validate_config_map(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = get(obj, "data").and_then(Value::as_object);
    let binary = get(obj, "binaryData").and_then(Value::as_object);
    let mut total = 0usize;
    for (k, v) in data.into_iter().flatten() {
        let path = format!("data[{k}]");
        errs.extend(
            is_config_map_key(k)
                .into_iter()
                .map(|m| FieldError::invalid(path.as_str(), k.as_str(), m)),
        );
        if binary.is_some_and(|b| b.contains_key(k)) {
            errs.push(FieldError::invalid(
                path.as_str(),
                k.as_str(),
                "duplicate of key present in binaryData",
            ));
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        let path = format!("binaryData[{k}]");
        errs.extend(
            is_config_map_key(k)
                .into_iter()
                .map(|m| FieldError::invalid(path.as_str(), k.as_str(), m)),
        );
        // binaryData travels base64-encoded; its size is that of the decoded bytes.
        total += v.as_str().map_or(0, |s| s.len() / 4 * 3);
    }
    if total > MAX_CONFIG_MAP_SIZE {
        errs.push(too_long("", MAX_CONFIG_MAP_SIZE));
    }
    errs
}

/// Parses one MetalLB pool entry: a CIDR, or an inclusive `start-end` range of one family.
pub(crate) fn parse_pool_range(entry: &str) -> Result<(IpAddr, IpAddr), &'static str> {
    if let Some((start, end)) = entry.split_once('-') {
        let (Some(start), Some(end)) = (parse_ip_sloppy(start.trim()), parse_ip_sloppy(end.trim()))
        else {
            return Err("must be a CIDR (e.g. 192.168.10.0/24) or an IP range (e.g. 192.168.10.1-192.168.10.10)");
        };
        if is_ipv6(&start) != is_ipv6(&end) {
            return Err("range start and end must be of the same IP family");
        }
        if start > end {
            return Err("range start must not be after its end");
        }
        return Ok((start, end));
    }
    let (ip, bits) = parse_cidr_sloppy(entry.trim()).ok_or(
        "must be a CIDR (e.g. 192.168.10.0/24) or an IP range (e.g. 192.168.10.1-192.168.10.10)",
    )?;
    let net = ipnet::IpNet::new(ip, bits)
        .map_err(|_| "invalid prefix length")?
        .trunc();
    Ok((net.network(), net.broadcast()))
}

/// MetalLB's IPAddressPool webhook rules: at least one address entry, each a CIDR or range.
fn validate_ip_address_pool(spec: &Value) -> Vec<FieldError> {
    let addrs = array(spec, "addresses");
    if addrs.is_empty() {
        return vec![FieldError::required("spec.addresses", "")];
    }
    let mut errs = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let s = a.as_str().unwrap_or("");
        if let Err(msg) = parse_pool_range(s) {
            errs.push(FieldError::invalid(index("spec.addresses", i), s, msg));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{find, RESOURCES};
    use serde_json::json;

    fn res(kind: &str) -> &'static ResourceInfo {
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("served kind")
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(FieldError::message).collect()
    }

    fn assert_has(errs: &[FieldError], want: &str) {
        let msgs = messages(errs);
        assert!(
            msgs.iter().any(|m| m == want),
            "expected {want:?} in {msgs:#?}"
        );
    }

    #[test]
    fn name_format_rules_accept_and_reject_as_kubernetes_does() {
        type Rule = fn(&str) -> Vec<String>;
        let table: &[(Rule, &str, bool)] = &[
            (is_dns1123_label, "my-name", true),
            (is_dns1123_label, "123-abc", true),
            (is_dns1123_label, "My-Name", false),
            (is_dns1123_label, "-a", false),
            (is_dns1123_label, "a.b", false),
            (is_dns1123_subdomain, "example.com", true),
            (is_dns1123_subdomain, "a..b", false),
            (is_dns1123_subdomain, "", false),
            (is_dns1035_label, "web", true),
            (is_dns1035_label, "1web", false),
            (is_qualified_name, "app.kubernetes.io/name", true),
            (is_qualified_name, "MyName", true),
            (is_qualified_name, "a/b/c", false),
            (is_qualified_name, "/a", false),
            (is_qualified_name, "a_", false),
            (is_valid_label_value, "", true),
            (is_valid_label_value, "v1.2_3", true),
            (is_valid_label_value, "a b", false),
            (is_valid_port_name, "http", true),
            (is_valid_port_name, "http-2", true),
            (is_valid_port_name, "8080", false),
            (is_valid_port_name, "a--b", false),
            (is_valid_port_name, "way-too-long-port-name", false),
            (is_config_map_key, "key.name", true),
            (is_config_map_key, "a/b", false),
            (is_config_map_key, "..a", false),
        ];
        for (f, v, ok) in table {
            assert_eq!(f(v).is_empty(), *ok, "{v:?}: {:?}", f(v));
        }
    }

    #[test]
    fn format_messages_are_kubernetes_text() {
        assert_eq!(
            is_dns1123_label("My_Name"),
            vec!["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]
        );
        assert_eq!(is_dns1123_label("a.b"), vec!["must not contain dots"]);
        assert_eq!(
            is_dns1035_label("1abc"),
            vec!["a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"]
        );
        assert_eq!(
            is_dns1123_subdomain("A"),
            vec!["a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
        );
        assert_eq!(
            is_qualified_name("/a"),
            vec!["prefix part must be non-empty"]
        );
        assert_eq!(
            is_dns1123_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
        assert_eq!(
            is_valid_port_name("8080"),
            vec!["must contain at least one letter (a-z)"]
        );
    }

    #[test]
    fn endpoint_ips_reject_special_ranges_and_accept_ordinary_addresses() {
        for ok in ["10.0.0.1", "192.168.1.1", "2001:db8::1", "010.000.000.001"] {
            assert!(
                validate_ip_address_for_endpoint(ok, "ip").is_empty(),
                "{ok}"
            );
        }
        let cases = [
            ("0.0.0.0", "ip: Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)"),
            ("127.0.0.1", "ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"),
            ("::1", "ip: Invalid value: \"::1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"),
            ("169.254.169.254", "ip: Invalid value: \"169.254.169.254\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
            ("fe80::1", "ip: Invalid value: \"fe80::1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
            ("224.0.0.5", "ip: Invalid value: \"224.0.0.5\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
            ("ff02::1", "ip: Invalid value: \"ff02::1\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
            ("nope", "ip: Invalid value: \"nope\": must be a valid IP address"),
        ];
        for (ip, want) in cases {
            assert_eq!(
                messages(&validate_ip_address_for_endpoint(ip, "ip")),
                vec![want.to_string()]
            );
        }
    }

    #[test]
    fn object_meta_requires_a_valid_name_and_namespace_per_resource() {
        let pod = json!({"metadata": {"name": "web-1.a", "namespace": "default"}});
        assert!(validate_object_meta(&pod, res("Pod")).is_empty());

        let nameless = json!({"metadata": {"namespace": "default"}});
        assert_has(
            &validate_object_meta(&nameless, res("Pod")),
            "metadata.name: Required value: name or generateName is required",
        );

        let ns_missing = json!({"metadata": {"name": "a"}});
        assert_has(
            &validate_object_meta(&ns_missing, res("Pod")),
            "metadata.namespace: Required value",
        );

        let cluster_scoped = json!({"metadata": {"name": "n1", "namespace": "default"}});
        assert_has(
            &validate_object_meta(&cluster_scoped, res("Node")),
            "metadata.namespace: Forbidden: not allowed on this type",
        );
        assert!(validate_object_meta(
            &json!({"metadata": {"name": "n1.example.com"}}),
            res("Node")
        )
        .is_empty());

        let dotted_ns = json!({"metadata": {"name": "a.b"}});
        assert_has(
            &validate_object_meta(&dotted_ns, res("Namespace")),
            "metadata.name: Invalid value: \"a.b\": must not contain dots",
        );

        let svc = json!({"metadata": {"name": "1web", "namespace": "default"}});
        let errs = validate_object_meta(&svc, res("Service"));
        assert!(messages(&errs)[0]
            .starts_with("metadata.name: Invalid value: \"1web\": a DNS-1035 label"));

        let generated =
            json!({"metadata": {"name": "web-x7k2p", "generateName": "web-", "namespace": "d"}});
        assert!(validate_object_meta(&generated, res("Pod")).is_empty());
    }

    #[test]
    fn labels_and_annotations_are_checked() {
        let bad = json!({"metadata": {"name": "a", "namespace": "d", "labels": {"a b": "x", "ok": "bad value"}}});
        let errs = validate_object_meta(&bad, res("ConfigMap"));
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().all(|e| e.field == "metadata.labels"));

        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let too_big =
            json!({"metadata": {"name": "a", "namespace": "d", "annotations": {"k": big}}});
        assert_has(
            &validate_object_meta(&too_big, res("ConfigMap")),
            "metadata.annotations: Too long: may not be more than 262144 bytes",
        );
        let upper = json!({"metadata": {"name": "a", "namespace": "d", "annotations": {"Example.COM/Key": "v"}}});
        assert!(validate_object_meta(&upper, res("ConfigMap")).is_empty());
    }

    #[test]
    fn finalizers_must_be_standard_or_qualified_on_builtin_kinds() {
        let ok = json!({"metadata": {"name": "a", "finalizers": ["kubernetes", "example.com/x"]}});
        assert!(validate_object_meta(&ok, res("Namespace")).is_empty());
        let bad = json!({"metadata": {"name": "a", "finalizers": ["custom"]}});
        assert_has(
            &validate_object_meta(&bad, res("Namespace")),
            "metadata.finalizers[0]: Invalid value: \"custom\": name is neither a standard finalizer name nor is it fully qualified",
        );
        let crd = json!({"metadata": {"name": "a", "namespace": "m", "finalizers": ["custom"]}});
        assert!(validate_object_meta(&crd, res("IPAddressPool")).is_empty());
    }

    #[test]
    fn identity_fields_are_immutable_on_update() {
        let old = json!({"metadata": {"name": "a", "namespace": "d", "uid": "u1", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        assert!(validate_object_meta_update(&old, &old).is_empty());
        let renamed = json!({"metadata": {"name": "b", "namespace": "d", "uid": "u2", "creationTimestamp": "2024-02-01T00:00:00Z"}});
        let errs = validate_object_meta_update(&renamed, &old);
        assert_eq!(
            messages(&errs),
            vec![
                "metadata.name: Invalid value: \"b\": field is immutable",
                "metadata.uid: Invalid value: \"u2\": field is immutable",
                "metadata.creationTimestamp: Invalid value: 2024-02-01 00:00:00 +0000 UTC: field is immutable",
            ]
        );
        let omitted = json!({"metadata": {"name": "a", "namespace": "d"}});
        assert!(validate_object_meta_update(&omitted, &old).is_empty());
    }

    #[test]
    fn finalizers_cannot_be_added_while_deleting() {
        let old = json!({"metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["kubernetes"]}});
        let new = json!({"metadata": {"name": "a", "finalizers": ["kubernetes", "example.com/x"]}});
        assert_has(
            &validate_object_meta_update(&new, &old),
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/x\"}",
        );
    }

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d"}, "spec": spec})
    }

    fn container(name: &str, image: &str) -> Value {
        json!({"name": name, "image": image, "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"})
    }

    #[test]
    fn pods_need_uniquely_named_containers_with_images() {
        let ok = pod(
            json!({"containers": [container("web", "nginx")], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}),
        );
        assert!(
            validate_create(res("Pod"), &ok).is_empty(),
            "{:?}",
            validate_create(res("Pod"), &ok)
        );

        let none = pod(json!({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}));
        assert_eq!(
            messages(&validate_create(res("Pod"), &none)),
            vec!["spec.containers: Required value"]
        );

        let bad = pod(json!({
            "containers": [container("Web", ""), container("Web", "x")],
            "restartPolicy": "Sometimes",
            "dnsPolicy": "Nope"
        }));
        let errs = validate_create(res("Pod"), &bad);
        assert_has(&errs, "spec.containers[0].image: Required value");
        assert_has(&errs, "spec.containers[1].name: Duplicate value: \"Web\"");
        assert_has(&errs, "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"");
        assert_has(
            &errs,
            "spec.dnsPolicy: Unsupported value: \"Nope\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"",
        );
        assert!(messages(&errs)
            .iter()
            .any(|m| m.starts_with("spec.containers[0].name: Invalid value: \"Web\"")));
    }

    #[test]
    fn container_ports_must_be_in_range_with_valid_names() {
        let mut c = container("web", "nginx");
        c["ports"] = json!([
            {"containerPort": 80, "protocol": "TCP", "name": "http"},
            {"containerPort": 70000, "protocol": "TCP"},
            {"containerPort": 0, "protocol": "ICMP", "name": "http"}
        ]);
        let p =
            pod(json!({"containers": [c], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}));
        let errs = validate_create(res("Pod"), &p);
        assert_has(&errs, "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive");
        assert_has(
            &errs,
            "spec.containers[0].ports[2].containerPort: Required value",
        );
        assert_has(
            &errs,
            "spec.containers[0].ports[2].name: Duplicate value: \"http\"",
        );
        assert_has(&errs, "spec.containers[0].ports[2].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"");
    }

    #[test]
    fn pod_updates_may_only_change_images_deadlines_and_tolerations() {
        let base = json!({
            "containers": [container("web", "nginx:1")],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]
        });
        let old = pod(base.clone());

        let mut image = base.clone();
        image["containers"][0]["image"] = json!("nginx:2");
        image["activeDeadlineSeconds"] = json!(30);
        image["tolerations"] = json!([
            {"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
            {"key": "b", "operator": "Exists"}
        ]);
        let errs = validate_update(res("Pod"), &pod(image), &old);
        assert!(errs.is_empty(), "{:#?}", messages(&errs));

        let mut restart = base.clone();
        restart["restartPolicy"] = json!("Never");
        let errs = validate_update(res("Pod"), &pod(restart), &old);
        assert_eq!(errs.len(), 1);
        let msg = errs[0].message();
        assert!(msg.starts_with("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)\n"), "{msg}");
        assert!(msg.contains("spec.restartPolicy"), "{msg}");

        let mut removed = base.clone();
        removed["tolerations"] = json!([]);
        assert_has(
            &validate_update(res("Pod"), &pod(removed), &old),
            "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds",
        );

        let mut more = base.clone();
        more["containers"] = json!([container("web", "nginx:1"), container("side", "busybox")]);
        assert_has(
            &validate_update(res("Pod"), &pod(more), &old),
            "spec.containers: Forbidden: pod updates may not add or remove containers",
        );
    }

    fn deployment(selector: Value, labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {
                "replicas": 1,
                "selector": selector,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container("web", "nginx")], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}
                }
            }
        })
    }

    #[test]
    fn deployment_selectors_must_match_template_labels() {
        let ok = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web", "x": "y"}),
        );
        assert!(
            validate_create(res("Deployment"), &ok).is_empty(),
            "{:#?}",
            messages(&validate_create(res("Deployment"), &ok))
        );

        let mismatch = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "api"}),
        );
        assert_eq!(
            messages(&validate_create(res("Deployment"), &mismatch)),
            vec!["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`"]
        );

        let empty = deployment(json!({}), json!({"app": "web"}));
        assert_has(
            &validate_create(res("Deployment"), &empty),
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment",
        );

        let mut missing = deployment(json!({}), json!({"app": "web"}));
        missing["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("selector");
        assert_has(
            &validate_create(res("Deployment"), &missing),
            "spec.selector: Required value",
        );

        let mut negative = ok.clone();
        negative["spec"]["replicas"] = json!(-1);
        assert_eq!(
            messages(&validate_create(res("Deployment"), &negative)),
            vec!["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]
        );
    }

    #[test]
    fn workload_selectors_are_immutable() {
        let old = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web", "v": "2"}),
        );
        let same = old.clone();
        assert!(validate_update(res("Deployment"), &same, &old).is_empty());
        let changed = deployment(
            json!({"matchLabels": {"app": "web", "v": "2"}}),
            json!({"app": "web", "v": "2"}),
        );
        assert_eq!(
            messages(&validate_update(res("Deployment"), &changed, &old)),
            vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"]
        );
        let mut rs = old.clone();
        rs["kind"] = json!("ReplicaSet");
        let mut rs2 = changed.clone();
        rs2["kind"] = json!("ReplicaSet");
        assert_eq!(validate_update(res("ReplicaSet"), &rs2, &rs).len(), 1);
    }

    #[test]
    fn replica_set_templates_must_restart_always() {
        let mut rs = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        );
        rs["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(
            messages(&validate_create(res("ReplicaSet"), &rs)),
            vec!["spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""]
        );
    }

    #[test]
    fn endpoints_need_valid_addresses_and_ports() {
        let ok = json!({"metadata": {"name": "web", "namespace": "d"}, "subsets": [{
            "addresses": [{"ip": "10.0.0.1"}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443, "protocol": "TCP"}]
        }]});
        assert!(validate_create(res("Endpoints"), &ok).is_empty());
        let bad = json!({"metadata": {"name": "web", "namespace": "d"}, "subsets": [{
            "addresses": [{"ip": "127.0.0.1"}, {"ip": "x"}],
            "ports": [{"port": 0, "protocol": "TCP"}, {"name": "b", "port": 1, "protocol": "ICMP"}]
        }, {}]});
        let errs = validate_create(res("Endpoints"), &bad);
        assert_has(&errs, "subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)");
        assert_has(&errs, "subsets[0].addresses[1].ip: Invalid value: \"x\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)");
        assert_has(&errs, "subsets[0].ports[0].name: Required value");
        assert_has(
            &errs,
            "subsets[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        assert_has(&errs, "subsets[0].ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"");
        assert_has(
            &errs,
            "subsets[1]: Required value: must specify `addresses` or `notReadyAddresses`",
        );
    }

    #[test]
    fn endpoint_slices_validate_addresses_for_their_type() {
        let slice = |t: &str, addrs: Value| {
            json!({"metadata": {"name": "web-abc", "namespace": "d"}, "addressType": t,
                   "endpoints": [{"addresses": addrs}], "ports": [{"name": "", "port": 80, "protocol": "TCP"}]})
        };
        assert!(
            validate_create(res("EndpointSlice"), &slice("IPv4", json!(["10.0.0.1"]))).is_empty()
        );
        assert!(
            validate_create(res("EndpointSlice"), &slice("IPv6", json!(["2001:db8::1"])))
                .is_empty()
        );
        assert!(validate_create(
            res("EndpointSlice"),
            &slice("FQDN", json!(["db.example.com"]))
        )
        .is_empty());
        assert_has(
            &validate_create(res("EndpointSlice"), &slice("IPv4", json!(["2001:db8::1"]))),
            "endpoints[0].addresses[0]: Invalid value: \"2001:db8::1\": must be a valid IPv4 address",
        );
        assert_has(
            &validate_create(res("EndpointSlice"), &slice("IPv4", json!(["169.254.1.1"]))),
            "endpoints[0].addresses[0]: Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        );
        assert_has(
            &validate_create(res("EndpointSlice"), &slice("IP", json!(["10.0.0.1"]))),
            "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
        );
        assert_has(
            &validate_create(res("EndpointSlice"), &slice("IPv4", json!([]))),
            "endpoints[0].addresses: Required value: must contain at least 1 address",
        );
        let many: Vec<Value> = (0..1001)
            .map(|_| json!({"addresses": ["10.0.0.1"]}))
            .collect();
        let mut big = slice("IPv4", json!(["10.0.0.1"]));
        big["endpoints"] = Value::Array(many);
        assert_has(
            &validate_create(res("EndpointSlice"), &big),
            "endpoints: Too many: 1001: must have at most 1000 items",
        );

        let old = slice("IPv4", json!(["10.0.0.1"]));
        let new = slice("IPv6", json!(["2001:db8::1"]));
        assert_has(
            &validate_update(res("EndpointSlice"), &new, &old),
            "addressType: Invalid value: \"IPv6\": field is immutable",
        );
    }

    #[test]
    fn nodes_need_valid_pod_cidrs_that_never_change() {
        let node = |cidr: &str| json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        assert!(validate_create(res("Node"), &node("10.244.0.0/24")).is_empty());
        assert_has(
            &validate_create(res("Node"), &node("10.244.0.0/33")),
            "spec.podCIDRs[0]: Invalid value: \"10.244.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        );
        let unassigned = json!({"metadata": {"name": "n1"}, "spec": {}});
        assert!(validate_update(res("Node"), &node("10.244.0.0/24"), &unassigned).is_empty());
        assert_has(
            &validate_update(res("Node"), &node("10.244.1.0/24"), &node("10.244.0.0/24")),
            "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
        );
    }

    #[test]
    fn config_map_keys_must_be_config_keys() {
        let ok = json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"a.b_c-D": "x"}});
        assert!(validate_create(res("ConfigMap"), &ok).is_empty());
        let bad = json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"a/b": "x"}});
        assert_eq!(
            messages(&validate_create(res("ConfigMap"), &bad)),
            vec!["data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"]
        );
    }

    #[test]
    fn ip_address_pools_need_cidrs_or_ranges() {
        let pool = |addrs: Value| json!({"metadata": {"name": "p", "namespace": "metallb-system"}, "spec": {"addresses": addrs}});
        let pools = find("metallb.io", "v1beta1", "ipaddresspools").expect("served");
        assert!(validate_create(
            pools,
            &pool(json!([
                "192.168.1.0/24",
                "10.0.0.1-10.0.0.9",
                "fc00::1 - fc00::5"
            ]))
        )
        .is_empty());
        assert_eq!(
            messages(&validate_create(pools, &pool(json!([])))),
            vec!["spec.addresses: Required value"]
        );
        let errs = validate_create(
            pools,
            &pool(json!(["10.0.0.9-10.0.0.1", "10.0.0.1-fc00::1", "nope"])),
        );
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[0].field, "spec.addresses[0]");
        let ads = find("metallb.io", "v1beta1", "l2advertisements").expect("served");
        assert!(
            validate_create(ads, &json!({"metadata": {"name": "l2", "namespace": "m"}})).is_empty()
        );
    }

    #[test]
    fn leases_events_and_namespaces_get_metadata_validation_only() {
        let lease = json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system"}, "spec": {"holderIdentity": "x"}});
        assert!(validate_create(res("Lease"), &lease).is_empty());
        assert!(
            validate_create(res("Namespace"), &json!({"metadata": {"name": "prod"}})).is_empty()
        );
        assert_eq!(
            validate_create(
                res("Event"),
                &json!({"metadata": {"name": "e.1", "namespace": "d"}})
            )
            .len(),
            0
        );
    }
}

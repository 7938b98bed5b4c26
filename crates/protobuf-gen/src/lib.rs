//! The generator of Switchyard's protobuf schema table, `crates/api/src/protobuf/schema.rs`: for
//! every message reachable from the kinds Switchyard accepts as protobuf request bodies, the field
//! numbers, wire kinds and Kubernetes JSON names its decoder needs.
//!
//! Two sources, neither edited by hand:
//! - the `k8s-pb` crate's prost definitions (`#[prost(string, optional, tag = "3")] pub cluster_ip`),
//!   read as source text because prost keeps field numbers only in attributes; the crate is an
//!   optional, never-enabled dependency so that Cargo.lock pins its version and
//!   `cargo metadata --all-features` fetches its source;
//! - `k8s-openapi`'s JSON schemas (through `schemars`), for the JSON name of each field (matched to
//!   the snake_case Rust name after dropping case and underscores: `cluster_ip` ↔ `clusterIP`) and
//!   for which fields Kubernetes always prints (OpenAPI `required`).
//!
//! One fact neither source holds is given here: [`EXPLICIT_ZERO`], the Go pointer fields whose
//! explicit zero differs from unset (see `switchyard_api::protobuf::Field::keep_zero`).
//!
//! Anything unexpected (an unmatched or ambiguous name, an unknown attribute, a special type whose
//! layout changed) fails the generator with a message, never a silently wrong table.
//!
//! Run `cargo run -p switchyard-protobuf-gen` to rewrite the table; its test fails while the
//! committed table differs from what it would write.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kind Switchyard accepts at the top level of a protobuf body: its `apiVersion` (`None`: any),
/// `kind` and protobuf message (module path in k8s-pb, `.`-separated).
struct Root {
    api_version: Option<&'static str>,
    kind: &'static str,
    proto: &'static str,
}

/// The built-in kinds of Switchyard's resource table, plus the bodies of `/scale` writes and of
/// deletes.
const ROOTS: &[Root] = &[
    Root {
        api_version: Some("v1"),
        kind: "Namespace",
        proto: "api.core.v1.Namespace",
    },
    Root {
        api_version: Some("v1"),
        kind: "Service",
        proto: "api.core.v1.Service",
    },
    Root {
        api_version: Some("v1"),
        kind: "Endpoints",
        proto: "api.core.v1.Endpoints",
    },
    Root {
        api_version: Some("v1"),
        kind: "Pod",
        proto: "api.core.v1.Pod",
    },
    Root {
        api_version: Some("v1"),
        kind: "Node",
        proto: "api.core.v1.Node",
    },
    Root {
        api_version: Some("v1"),
        kind: "Event",
        proto: "api.core.v1.Event",
    },
    Root {
        api_version: Some("v1"),
        kind: "ConfigMap",
        proto: "api.core.v1.ConfigMap",
    },
    Root {
        api_version: Some("discovery.k8s.io/v1"),
        kind: "EndpointSlice",
        proto: "api.discovery.v1.EndpointSlice",
    },
    Root {
        api_version: Some("coordination.k8s.io/v1"),
        kind: "Lease",
        proto: "api.coordination.v1.Lease",
    },
    Root {
        api_version: Some("apps/v1"),
        kind: "Deployment",
        proto: "api.apps.v1.Deployment",
    },
    Root {
        api_version: Some("apps/v1"),
        kind: "ReplicaSet",
        proto: "api.apps.v1.ReplicaSet",
    },
    Root {
        api_version: Some("autoscaling/v1"),
        kind: "Scale",
        proto: "api.autoscaling.v1.Scale",
    },
    Root {
        api_version: None,
        kind: "DeleteOptions",
        proto: "apimachinery.pkg.apis.meta.v1.DeleteOptions",
    },
];

/// The JSON schemas of the roots (and, through them, of every type they contain).
fn openapi_definitions() -> serde_json::Map<String, Value> {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v1 as autoscaling, coordination::v1 as coord,
    };
    use k8s_openapi::api::{core::v1 as core, discovery::v1 as disc};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    g.subschema_for::<core::Namespace>();
    g.subschema_for::<core::Service>();
    g.subschema_for::<core::Endpoints>();
    g.subschema_for::<core::Pod>();
    g.subschema_for::<core::Node>();
    g.subschema_for::<core::Event>();
    g.subschema_for::<core::ConfigMap>();
    g.subschema_for::<disc::EndpointSlice>();
    g.subschema_for::<coord::Lease>();
    g.subschema_for::<apps::Deployment>();
    g.subschema_for::<apps::ReplicaSet>();
    g.subschema_for::<autoscaling::Scale>();
    g.subschema_for::<meta::DeleteOptions>();
    g.take_definitions(false)
}

/// Go pointer fields whose explicit zero value (`0`, `false`, `""`) means something other than
/// unset, so the decoder must keep it although Go would omit the same zero in a plain field.
/// Protobuf encodes both alike and OpenAPI does not say which Go fields are pointers, hence this
/// list: (message, JSON field name). The generator fails if an entry names no scalar field of a
/// reachable message.
pub const EXPLICIT_ZERO: &[(&str, &str)] = &[
    // Counts and limits whose unset value is defaulted to something else (1, 10, 600 seconds).
    ("api.apps.v1.DeploymentSpec", "replicas"),
    ("api.apps.v1.DeploymentSpec", "revisionHistoryLimit"),
    ("api.apps.v1.DeploymentSpec", "progressDeadlineSeconds"),
    ("api.apps.v1.ReplicaSetSpec", "replicas"),
    // A plain field in Go, kept so that a protobuf scale to zero reaches Switchyard's `/scale`
    // handler as `spec.replicas: 0` rather than as a missing `spec.replicas`.
    ("api.autoscaling.v1.ScaleSpec", "replicas"),
    // Pods: 0 seconds means "at once"; unset booleans mean "the default", often true.
    ("api.core.v1.PodSpec", "terminationGracePeriodSeconds"),
    ("api.core.v1.PodSpec", "activeDeadlineSeconds"),
    ("api.core.v1.PodSpec", "automountServiceAccountToken"),
    ("api.core.v1.PodSpec", "shareProcessNamespace"),
    ("api.core.v1.PodSpec", "enableServiceLinks"),
    ("api.core.v1.PodSpec", "hostUsers"),
    ("api.core.v1.PodSpec", "setHostnameAsFQDN"),
    ("api.core.v1.Probe", "terminationGracePeriodSeconds"),
    ("api.core.v1.SecurityContext", "privileged"),
    ("api.core.v1.SecurityContext", "runAsUser"),
    ("api.core.v1.SecurityContext", "runAsGroup"),
    ("api.core.v1.SecurityContext", "runAsNonRoot"),
    ("api.core.v1.SecurityContext", "readOnlyRootFilesystem"),
    ("api.core.v1.SecurityContext", "allowPrivilegeEscalation"),
    ("api.core.v1.PodSecurityContext", "runAsUser"),
    ("api.core.v1.PodSecurityContext", "runAsGroup"),
    ("api.core.v1.PodSecurityContext", "runAsNonRoot"),
    ("api.core.v1.PodSecurityContext", "fsGroup"),
    // Unset means true.
    ("api.core.v1.ServiceSpec", "allocateLoadBalancerNodePorts"),
    ("api.core.v1.ConfigMap", "immutable"),
    // EndpointSlice consumers read an unset condition as true; unnamed ports are named "".
    ("api.discovery.v1.EndpointConditions", "ready"),
    ("api.discovery.v1.EndpointConditions", "serving"),
    ("api.discovery.v1.EndpointConditions", "terminating"),
    ("api.discovery.v1.EndpointPort", "name"),
    ("api.discovery.v1.EndpointPort", "port"),
    // Leases as leader election writes them: a released lease has holder "".
    ("api.coordination.v1.LeaseSpec", "holderIdentity"),
    ("api.coordination.v1.LeaseSpec", "leaseDurationSeconds"),
    ("api.coordination.v1.LeaseSpec", "leaseTransitions"),
    // A grace period of 0 deletes at once.
    (
        "apimachinery.pkg.apis.meta.v1.DeleteOptions",
        "gracePeriodSeconds",
    ),
    (
        "apimachinery.pkg.apis.meta.v1.DeleteOptions",
        "orphanDependents",
    ),
    (
        "apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "deletionGracePeriodSeconds",
    ),
];

/// A message's fields as (number, Rust name, prost type).
type Layout = &'static [(u32, &'static str, &'static str)];

/// Messages the decoder reads by hand, with the layout it assumes: (message, `Kind` variant,
/// fields as (number, Rust name, prost type)). The generator checks the layout still holds.
const SPECIAL: &[(&str, &str, Layout)] = &[
    (
        "apimachinery.pkg.apis.meta.v1.Time",
        "Time",
        &[(1, "seconds", "int64"), (2, "nanos", "int32")],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.MicroTime",
        "MicroTime",
        &[(1, "seconds", "int64"), (2, "nanos", "int32")],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.Duration",
        "Duration",
        &[(1, "duration", "int64")],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.FieldsV1",
        "FieldsV1",
        &[(1, "raw", "bytes")],
    ),
    (
        "apimachinery.pkg.util.intstr.IntOrString",
        "IntOrString",
        &[
            (1, "type", "int64"),
            (2, "int_val", "int32"),
            (3, "str_val", "string"),
        ],
    ),
    (
        "apimachinery.pkg.api.resource.Quantity",
        "Quantity",
        &[(1, "string", "string")],
    ),
    (
        "apimachinery.pkg.runtime.RawExtension",
        "RawExtension",
        &[(1, "raw", "bytes")],
    ),
];

/// A field's type as prost declares it.
#[derive(Clone, Debug, PartialEq)]
enum PType {
    /// `string`, `bytes`, `bool`, `int32`, `int64`, `double`.
    Scalar(String),
    /// A message, by full module path.
    Message(String),
    /// `btree_map = "string, V"`, with V's type.
    Map(Box<PType>),
    /// An attribute this generator does not understand; an error only if the message is used.
    Unsupported(String),
}

#[derive(Clone, Debug)]
struct PField {
    rust: String,
    tag: u32,
    ty: PType,
    repeated: bool,
}

/// Where Cargo put the k8s-pb sources, and the versions of k8s-pb and k8s-openapi in use.
pub struct Sources {
    pub k8s_pb_dir: PathBuf,
    pub k8s_pb_version: String,
    pub k8s_openapi_version: String,
}

/// Find the sources through `cargo metadata` (which fetches k8s-pb if it is not yet on disk).
pub fn locate_sources() -> Result<Sources> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let packages = meta["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata lists no packages"))?;
    let find = |name: &str| -> Result<&Value> {
        let found: Vec<&Value> = packages.iter().filter(|p| p["name"] == name).collect();
        match found.as_slice() {
            [one] => Ok(one),
            _ => bail!(
                "expected exactly one {name} package in cargo metadata, found {}",
                found.len()
            ),
        }
    };
    let pb = find("k8s-pb")?;
    let manifest_path = pb["manifest_path"]
        .as_str()
        .ok_or_else(|| anyhow!("k8s-pb has no manifest_path"))?;
    let dir = Path::new(manifest_path)
        .parent()
        .ok_or_else(|| anyhow!("k8s-pb manifest has no directory"))?;
    let version = |p: &Value| {
        p["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no version"))
    };
    Ok(Sources {
        k8s_pb_dir: dir.to_path_buf(),
        k8s_pb_version: version(pb)?,
        k8s_openapi_version: version(find("k8s-openapi")?)?,
    })
}

/// Where the generated table is committed.
pub fn output_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src/protobuf/schema.rs")
}

/// Every struct of k8s-pb's `api` and `apimachinery` modules, by full module path.
fn parse_k8s_pb(dir: &Path) -> Result<HashMap<String, Vec<PField>>> {
    let mut messages = HashMap::new();
    for top in ["api", "apimachinery"] {
        let mut stack = vec![dir.join("src").join(top)];
        while let Some(d) = stack.pop() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
                .with_context(|| format!("reading {}", d.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            entries.sort();
            for path in entries {
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "mod.rs") {
                    let rel = path
                        .parent()
                        .and_then(|p| p.strip_prefix(dir.join("src")).ok());
                    let module: Vec<String> = rel
                        .ok_or_else(|| anyhow!("{} is outside the crate", path.display()))?
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    for (name, fields) in parse_module(&text, &module)
                        .with_context(|| format!("parsing {}", path.display()))?
                    {
                        messages.insert(format!("{}.{name}", module.join(".")), fields);
                    }
                }
            }
        }
    }
    Ok(messages)
}

/// The structs of one prost-generated module: `pub struct Name {` at the start of a line, fields
/// as `#[prost(...)]` followed by `pub name: Type,` (the type may span lines), `}` alone closing.
fn parse_module(text: &str, module: &[String]) -> Result<Vec<(String, Vec<PField>)>> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<PField>)> = None;
    let mut attr: Option<String> = None;
    let mut field: Option<(String, String, String)> = None; // (attr, rust name, type text so far)
    for line in text.lines() {
        let t = line.trim();
        if let Some((attr_text, name, mut ty)) = field.take() {
            ty.push_str(t);
            if type_complete(&ty) {
                let (_, fields) = current
                    .as_mut()
                    .ok_or_else(|| anyhow!("field outside a struct"))?;
                fields.push(parse_field(&attr_text, &name, &ty, module)?);
            } else {
                field = Some((attr_text, name, ty));
            }
            continue;
        }
        match &mut current {
            None => {
                if let Some(rest) = line.strip_prefix("pub struct ") {
                    let name = rest.split([' ', '{', ';']).next().unwrap_or("").to_string();
                    if rest.trim_end().ends_with("{}") || rest.trim_end().ends_with(';') {
                        out.push((name, Vec::new()));
                    } else if rest.trim_end().ends_with('{') {
                        current = Some((name, Vec::new()));
                    }
                }
            }
            Some(_) => {
                if line == "}" {
                    out.extend(current.take());
                    attr = None;
                } else if t.starts_with("#[prost(") {
                    attr = Some(t.to_string());
                } else if let (Some(a), Some(rest)) = (attr.take(), t.strip_prefix("pub ")) {
                    let (name, ty) = rest
                        .split_once(':')
                        .ok_or_else(|| anyhow!("no type in field line {t:?}"))?;
                    let (name, ty) = (
                        name.trim().trim_start_matches("r#").to_string(),
                        ty.trim().to_string(),
                    );
                    if type_complete(&ty) {
                        let (_, fields) = current
                            .as_mut()
                            .ok_or_else(|| anyhow!("field outside a struct"))?;
                        fields.push(parse_field(&a, &name, &ty, module)?);
                    } else {
                        field = Some((a, name, ty));
                    }
                }
            }
        }
    }
    if current.is_some() || field.is_some() {
        bail!("a struct is not closed at the end of the module");
    }
    Ok(out)
}

fn type_complete(ty: &str) -> bool {
    ty.ends_with(',') && ty.matches('<').count() == ty.matches('>').count()
}

/// Split `a, b = "x, y", c` at the commas outside quotes.
fn attr_parts(attr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in attr.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    parts.push(cur.trim().to_string());
    parts
}

fn parse_field(attr: &str, name: &str, ty: &str, module: &[String]) -> Result<PField> {
    let inner = attr
        .strip_prefix("#[prost(")
        .and_then(|a| a.strip_suffix(")]"))
        .ok_or_else(|| anyhow!("unexpected attribute {attr:?}"))?;
    let parts = attr_parts(inner);
    let mut tag = None;
    let mut repeated = false;
    let mut kind = None;
    for p in &parts {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (p.as_str(), None),
        };
        match (key, value) {
            ("tag", Some(v)) => {
                tag = Some(v.parse::<u32>().with_context(|| format!("tag of {name}"))?)
            }
            ("optional" | "boxed", None) | ("packed", Some(_)) => {}
            ("repeated", None) => repeated = true,
            ("string" | "bool" | "int32" | "int64" | "double", None) => {
                kind = Some(PType::Scalar(key.to_string()))
            }
            ("bytes", Some("vec")) => kind = Some(PType::Scalar("bytes".into())),
            ("message", None) => kind = Some(PType::Message(resolve(&message_path(ty)?, module))),
            ("btree_map", Some(v)) => {
                let value = match v.split_once(',').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("string", "string")) => PType::Scalar("string".into()),
                    Some(("string", "bytes")) => PType::Scalar("bytes".into()),
                    Some(("string", "message")) => {
                        PType::Message(resolve(&map_value_path(ty)?, module))
                    }
                    _ => PType::Unsupported(p.clone()),
                };
                kind = Some(PType::Map(Box::new(value)));
            }
            _ => kind = Some(PType::Unsupported(p.clone())),
        }
    }
    Ok(PField {
        rust: name.to_string(),
        tag: tag.ok_or_else(|| anyhow!("field {name} has no tag"))?,
        ty: kind.ok_or_else(|| anyhow!("field {name} has no type in {attr:?}"))?,
        repeated,
    })
}

/// A field's type text without whitespace, the field's closing comma, or rustfmt's trailing
/// commas inside generics (`BTreeMap<\n String,\n Quantity,\n>`).
fn compact_type(ty: &str) -> String {
    let t: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    t.trim_end_matches(',').replace(",>", ">")
}

/// The message path inside `Option<...>`, `Vec<...>` and `Box<...>`.
fn message_path(ty: &str) -> Result<String> {
    let mut t = compact_type(ty);
    for wrapper in [
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
    ] {
        if let Some(rest) = t.strip_prefix(wrapper) {
            t = rest
                .strip_suffix('>')
                .ok_or_else(|| anyhow!("unbalanced type {ty:?}"))?
                .to_string();
        }
    }
    if t.contains('<') {
        bail!("unexpected message type {ty:?}");
    }
    Ok(t)
}

/// The value type of `BTreeMap<String, V>`.
fn map_value_path(ty: &str) -> Result<String> {
    let t = compact_type(ty);
    let inner = t
        .strip_prefix("::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,")
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| anyhow!("unexpected map type {ty:?}"))?;
    Ok(inner.to_string())
}

/// A Rust path relative to `module` (`super::super::X`, `X`) as a full `.`-separated path.
fn resolve(path: &str, module: &[String]) -> String {
    let mut base: Vec<&str> = module.iter().map(String::as_str).collect();
    let mut segments: Vec<&str> = path.split("::").collect();
    if segments.first() == Some(&"crate") {
        base.clear();
        segments.remove(0);
    }
    while segments.first() == Some(&"super") {
        base.pop();
        segments.remove(0);
    }
    base.extend(segments);
    base.join(".")
}

fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// `ServiceSpec` → `SERVICE_SPEC`, `IPBlock` → `IP_BLOCK`.
fn screaming(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// The static's name of a message: its group, version and type (`CORE_V1_SERVICE_SPEC`).
fn static_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let n = parts.len();
    let prefix = if n >= 3 {
        format!("{}_{}_", parts[n - 3], parts[n - 2])
    } else {
        String::new()
    };
    format!("{}{}", prefix.to_uppercase(), screaming(parts[n - 1]))
}

/// One message's generated fields: (number, JSON name, Rust kind expression, repeated, keep zero,
/// inline).
type GenField = (u32, String, String, bool, bool, bool);

/// The JSON schema of a k8s-pb message. k8s-pb spells acronyms as Rust does
/// (`AwsElasticBlockStoreVolumeSource` for `AWSElasticBlockStoreVolumeSource`), so names match
/// ignoring case.
fn openapi_schema<'a>(
    definitions: &'a serde_json::Map<String, Value>,
    path: &str,
) -> Result<(String, &'a Value)> {
    let wanted = format!("io.k8s.{path}").to_lowercase();
    let candidates: Vec<(&String, &Value)> = definitions
        .iter()
        .filter(|(k, _)| k.to_lowercase() == wanted)
        .collect();
    match candidates.as_slice() {
        [(name, def)] => Ok(((*name).clone(), *def)),
        [] => bail!("k8s-openapi has no schema named like io.k8s.{path}"),
        many => bail!(
            "{path}: ambiguous, matches schemas {:?}",
            many.iter().map(|(k, _)| k).collect::<Vec<_>>()
        ),
    }
}

/// The JSON side of a message: its schema's name, property names and required properties.
#[derive(Clone)]
struct JsonSide {
    name: String,
    props: Vec<String>,
    required: BTreeSet<String>,
    /// The message's own schema, whose every property needs a protobuf field; false for a
    /// message inlined into a parent, which has the parent's (a superset of its own).
    own: bool,
}

impl JsonSide {
    fn of(name: String, def: &Value) -> Self {
        let props = def
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let required = def
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            name,
            props,
            required,
            own: true,
        }
    }
}

/// Generate the table's source text.
pub fn generate(sources: &Sources) -> Result<String> {
    let messages = parse_k8s_pb(&sources.k8s_pb_dir)?;
    let definitions = openapi_definitions();
    let special: HashMap<&str, &str> = SPECIAL.iter().map(|(p, k, _)| (*p, *k)).collect();
    for (path, _, layout) in SPECIAL {
        let fields = messages
            .get(*path)
            .ok_or_else(|| anyhow!("k8s-pb has no {path}"))?;
        let actual: Vec<(u32, &str, String)> = fields
            .iter()
            .map(|f| (f.tag, f.rust.as_str(), format!("{:?}", f.ty)))
            .collect();
        let expected: Vec<(u32, &str, String)> = layout
            .iter()
            .map(|(t, n, ty)| (*t, *n, format!("{:?}", PType::Scalar(ty.to_string()))))
            .collect();
        if actual != expected || fields.iter().any(|f| f.repeated) {
            bail!("{path} changed layout: the decoder reads it by hand as {expected:?}, k8s-pb now has {actual:?}");
        }
    }

    // Every message reachable from the roots, in discovery order (so a message is seen before
    // the messages it inlines).
    let mut reachable = BTreeSet::new();
    let mut order = Vec::new();
    let mut queue: VecDeque<String> = ROOTS.iter().map(|r| r.proto.to_string()).collect();
    while let Some(path) = queue.pop_front() {
        if special.contains_key(path.as_str()) || !reachable.insert(path.clone()) {
            continue;
        }
        order.push(path.clone());
        let fields = messages
            .get(&path)
            .ok_or_else(|| anyhow!("k8s-pb has no message {path}"))?;
        for f in fields {
            let mut ty = &f.ty;
            if let PType::Map(v) = ty {
                ty = v;
            }
            match ty {
                PType::Message(m) => queue.push_back(m.clone()),
                PType::Unsupported(a) => {
                    bail!("{path}.{}: unsupported prost attribute {a:?}", f.rust)
                }
                _ => {}
            }
        }
    }

    let mut explicit: BTreeMap<(String, String), bool> = EXPLICIT_ZERO
        .iter()
        .map(|(m, f)| ((m.to_string(), f.to_string()), false))
        .collect();
    // Messages without a JSON schema of their own, inlined into a parent's JSON, by path.
    let mut inlined: HashMap<String, JsonSide> = HashMap::new();
    let mut generated: BTreeMap<String, (String, Vec<GenField>)> = BTreeMap::new();
    for path in &order {
        let side = match openapi_schema(&definitions, path) {
            Ok((name, def)) => JsonSide::of(name, def),
            Err(e) => inlined.get(path).cloned().ok_or(e)?,
        };
        let mut used = BTreeSet::new();
        let mut fields = Vec::new();
        for f in &messages[path] {
            let matches: Vec<&String> = side
                .props
                .iter()
                .filter(|p| normalise(p) == normalise(&f.rust))
                .collect();
            let json = match (matches.as_slice(), &f.ty) {
                ([one], _) => (*one).clone(),
                // A Go struct embedded with `json:",inline"`: a message field in protobuf whose
                // fields JSON prints in the parent (`ConfigMapEnvSource.localObjectReference`).
                ([], PType::Message(m)) if !f.repeated && !special.contains_key(m.as_str()) => {
                    let inner_props: Vec<String> = match openapi_schema(&definitions, m) {
                        Ok((_, def)) => JsonSide::of(String::new(), def).props,
                        // No schema of its own (`EphemeralContainerCommon`): its fields must
                        // all be the parent's.
                        Err(_) => messages
                            .get(m)
                            .ok_or_else(|| anyhow!("k8s-pb has no message {m}"))?
                            .iter()
                            .map(|g| {
                                side.props
                                    .iter()
                                    .find(|p| normalise(p) == normalise(&g.rust))
                                    .cloned()
                                    .ok_or_else(|| {
                                        anyhow!(
                                            "{path}.{}: inlined {m}.{} is no JSON property of {}",
                                            f.rust,
                                            g.rust,
                                            side.name
                                        )
                                    })
                            })
                            .collect::<Result<_>>()?,
                    };
                    if inner_props.is_empty() || !inner_props.iter().all(|p| side.props.contains(p))
                    {
                        bail!(
                            "{path}.{}: no JSON property of {} matches, nor does it inline {m}",
                            f.rust,
                            side.name
                        );
                    }
                    for p in inner_props {
                        if !used.insert(p.clone()) {
                            bail!("{path}: the inlined {m} repeats the JSON property {p}");
                        }
                    }
                    inlined.insert(
                        m.clone(),
                        JsonSide {
                            own: false,
                            ..side.clone()
                        },
                    );
                    fields.push((
                        f.tag,
                        String::new(),
                        kind_expr(&f.ty, &special)?,
                        false,
                        false,
                        true,
                    ));
                    continue;
                }
                ([], _) => bail!(
                    "{path}.{}: no JSON property of {} matches (it has {:?})",
                    f.rust,
                    side.name,
                    side.props
                ),
                (many, _) => bail!(
                    "{path}.{}: ambiguous, matches JSON properties {many:?}",
                    f.rust
                ),
            };
            if !used.insert(json.clone()) {
                bail!("{path}: two protobuf fields map to the JSON property {json}");
            }
            let kind = kind_expr(&f.ty, &special)?;
            let scalar = matches!(f.ty, PType::Scalar(_));
            let mut keep_zero = side.required.contains(&json);
            if let Some(seen) = explicit.get_mut(&(path.clone(), json.clone())) {
                if !scalar || f.repeated {
                    bail!("EXPLICIT_ZERO names {path}.{json}, which is not a singular scalar");
                }
                *seen = true;
                keep_zero = true;
            }
            fields.push((
                f.tag,
                json,
                kind,
                f.repeated,
                keep_zero && scalar && !f.repeated,
                false,
            ));
        }
        // TypeMeta is inlined in JSON but not part of the protobuf message.
        let missing: Vec<&String> = side
            .props
            .iter()
            .filter(|p| !used.contains(p.as_str()) && !["apiVersion", "kind"].contains(&p.as_str()))
            .collect();
        if side.own && !missing.is_empty() {
            bail!(
                "{path}: JSON properties {missing:?} of {} have no protobuf field in k8s-pb",
                side.name
            );
        }
        let name = static_name(path);
        if generated.contains_key(&name) {
            bail!("two messages would be named {name}");
        }
        let openapi_name = if side.own {
            side.name
        } else {
            format!("io.k8s.{path}")
        };
        generated.insert(name, (openapi_name, fields));
    }
    if let Some(((m, f), _)) = explicit.iter().find(|(_, seen)| !**seen) {
        bail!("EXPLICIT_ZERO names {m}.{f}, which is not a field of any reachable message");
    }
    Ok(render(sources, &generated))
}

/// The Rust expression of a field's `Kind`.
fn kind_expr(ty: &PType, special: &HashMap<&str, &str>) -> Result<String> {
    Ok(match ty {
        PType::Scalar(s) => match s.as_str() {
            "string" => "K::String".into(),
            "bytes" => "K::Bytes".into(),
            "bool" => "K::Bool".into(),
            "int32" => "K::Int32".into(),
            "int64" => "K::Int64".into(),
            "double" => "K::Double".into(),
            other => bail!("unexpected scalar {other}"),
        },
        PType::Message(m) => match special.get(m.as_str()) {
            Some(k) => format!("K::{k}"),
            None => format!("K::Message(&{})", static_name(m)),
        },
        PType::Map(v) => {
            if matches!(**v, PType::Map(_)) {
                bail!("maps of maps are not supported");
            }
            format!("K::Map(&{})", kind_expr(v, special)?)
        }
        PType::Unsupported(a) => bail!("unsupported prost attribute {a:?}"),
    })
}

fn render(sources: &Sources, generated: &BTreeMap<String, (String, Vec<GenField>)>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "//! The protobuf schema of every message Switchyard decodes from request bodies: field numbers,\n\
         //! wire kinds and Kubernetes JSON names, from k8s-pb {} and k8s-openapi {}.\n\
         //!\n\
         //! Generated by `cargo run -p switchyard-protobuf-gen`; do not edit. That crate's test fails\n\
         //! while this file differs from what the generator writes.\n\
         #![cfg_attr(rustfmt, rustfmt::skip)]\n\
         \n\
         use super::{{Field as F, Kind as K, Message, TopLevel}};\n",
        sources.k8s_pb_version, sources.k8s_openapi_version
    );
    let _ = writeln!(s, "/// The kinds a body may carry at the top level.");
    let _ = writeln!(s, "pub static TOP_LEVEL: &[TopLevel] = &[");
    for r in ROOTS {
        let api_version = match r.api_version {
            Some(v) => format!("Some({v:?})"),
            None => "None".into(),
        };
        let _ = writeln!(
            s,
            "    TopLevel {{ api_version: {api_version}, kind: {:?}, message: &{} }},",
            r.kind,
            static_name(r.proto)
        );
    }
    let _ = writeln!(s, "];");
    for (name, (openapi_name, fields)) in generated {
        let _ = writeln!(s, "\npub static {name}: Message = Message {{\n    name: {openapi_name:?},\n    fields: &[");
        for (tag, json, kind, repeated, keep_zero, inline) in fields {
            let mut line = if *inline {
                format!("        F::inline({tag}, {kind})")
            } else {
                format!("        F::new({tag}, {json:?}, {kind})")
            };
            if *repeated {
                line.push_str(".repeated()");
            }
            if *keep_zero {
                line.push_str(".keep_zero()");
            }
            let _ = writeln!(s, "{line},");
        }
        let _ = writeln!(s, "    ],\n}};");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schema_is_what_the_generator_writes() {
        let sources = locate_sources().expect("cargo metadata finds k8s-pb");
        let fresh = generate(&sources).expect("the generator succeeds");
        let committed = std::fs::read_to_string(output_path()).expect("the schema is committed");
        assert!(
            fresh == committed,
            "crates/api/src/protobuf/schema.rs is stale: run `cargo run -p switchyard-protobuf-gen`"
        );
    }

    #[test]
    fn rust_paths_resolve_relative_to_their_module() {
        let module: Vec<String> = ["api", "core", "v1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            resolve(
                "super::super::super::apimachinery::pkg::apis::meta::v1::ObjectMeta",
                &module
            ),
            "apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(resolve("ServicePort", &module), "api.core.v1.ServicePort");
    }

    #[test]
    fn static_names_keep_acronyms_readable() {
        assert_eq!(
            static_name("api.core.v1.ServiceSpec"),
            "CORE_V1_SERVICE_SPEC"
        );
        assert_eq!(
            static_name("api.networking.v1.IPBlock"),
            "NETWORKING_V1_IP_BLOCK"
        );
        assert_eq!(
            static_name("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "META_V1_OBJECT_META"
        );
    }

    #[test]
    fn attributes_split_outside_quotes() {
        assert_eq!(
            attr_parts(r#"btree_map = "string, bytes", tag = "2""#),
            vec![r#"btree_map = "string, bytes""#, r#"tag = "2""#]
        );
    }
}

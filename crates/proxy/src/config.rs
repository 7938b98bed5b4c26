//! kube-proxy's configuration file, `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`,
//! k8s.io/kube-proxy/config/v1alpha1/types.go), as `--config FILE` or the `config.conf` key of a
//! ConfigMap (kubeadm writes kube-system/kube-proxy), in YAML or JSON.
//!
//! Parsing is strict: a wrong `kind`/`apiVersion`, an unknown field or a value of the wrong
//! type is a one-line error naming the field (kube-proxy falls back to a lenient decoding with a
//! warning; a typo silently ignored is worse). Every v1alpha1 field is known; those that do not
//! apply to Switchyard (client QPS, logging, Windows, OOM score, ...) are accepted and ignored,
//! so kubeadm's file loads unchanged.
//!
//! Resolution follows kube-proxy's v1alpha1 conversion and defaults:
//! - the section named by `mode` gives the sync periods (`nftables`, `ipvs`, else `iptables`),
//!   and `masqueradeAll` comes from `nftables` in nftables mode, else from `iptables`;
//! - zero durations and empty addresses take kube-proxy's defaults (30s sync, 1s min sync,
//!   `0.0.0.0:10256` health, `127.0.0.1:10249` metrics); an address without a port gets the
//!   default port;
//! - `mode: ""` picks nftables when `nft` runs in the namespace, else the userspace proxy;
//!   `iptables` and `ipvs` are served by nftables (Switchyard has no iptables or IPVS data
//!   plane; the Services behave the same), with a warning; `kernelspace` is an error;
//! - `ipvs.scheduler` picks the endpoint choice in every mode (Switchyard's
//!   `--ipvs-scheduler`): `""`/`random`, `rr`, `sh`, or `lc` (userspace only).
//! - `clusterCIDR` is one CIDR or a dual-stack pair (one per family, kube-proxy's validation);
//!   of a pair, the IPv4 CIDR tells cluster traffic apart and the other is reported in a
//!   warning ([`ProxyConfig`] holds one).
//!
//! [`Conntrack`] settings are sysctls of the proxy's network namespace
//! (`net.netfilter.nf_conntrack_*` are per namespace), never of the root namespace unless the
//! proxy runs there. Only what the file sets is written.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::Deserialize;
use switchyard_netns::NetNs;

use crate::nftables::Scheduler;
use crate::proxier::{ProxyConfig, ProxyMode};
use crate::userspace::Balance;

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";
/// The ConfigMap key kubeadm writes the configuration under (kube-system/kube-proxy).
pub const CONFIG_MAP_KEY: &str = "config.conf";
/// kube-proxy's `ports.ProxyHealthzPort`.
pub const HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's `ports.ProxyStatusPort`.
pub const METRICS_PORT: u16 = 10249;

/// Errors of reading or resolving a configuration. None is retryable with the same text.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not a valid `KubeProxyConfiguration`: syntax, kind, apiVersion, an unknown
    /// field or a value of the wrong type (the message names the field).
    #[error("{0}")]
    Parse(String),
    /// A field's value cannot be used.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The requested data plane cannot run here (`mode: nftables` without `nft`).
    #[error("{0}")]
    Unavailable(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A Go duration (`metav1.Duration`): `"30s"`, `"1m0s"`, `"1.5h"`, `"500ms"`, `"0s"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_go_duration(&text)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a non-negative Go duration (`time.ParseDuration`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (use forms like 500ms, 30s, 1m0s, 2h)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// kube-proxy's `clusterCIDR` (and `--cluster-cidr`): one CIDR, or a dual-stack pair
/// `"10.244.0.0/16,fd00:10:244::/56"` with one CIDR of each family (kube-proxy's validation).
/// Host bits are cleared.
pub fn parse_cluster_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let net: IpNet = part
            .parse()
            .map_err(|_| format!("{part:?} is not a CIDR"))?;
        if cidrs
            .iter()
            .any(|c| matches!(c, IpNet::V4(_)) == matches!(net, IpNet::V4(_)))
        {
            return Err(format!("{text:?}: give at most one CIDR of each IP family"));
        }
        cidrs.push(net.trunc());
    }
    Ok(cidrs)
}

/// `KubeProxyConfiguration` v1alpha1: every field, so that any kube-proxy file parses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub client_connection: Option<ClientConnection>,
    pub logging: Option<IgnoredAny>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<IptablesSection>,
    pub ipvs: Option<IpvsSection>,
    pub nftables: Option<NftablesSection>,
    pub winkernel: Option<IgnoredAny>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<IgnoredAny>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Option<ConntrackSection>,
    pub config_sync_period: Option<GoDuration>,
    pub port_range: Option<String>,
    pub windows_run_as_service: Option<bool>,
}

/// component-base's `ClientConnectionConfiguration`; only `kubeconfig` is used.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IptablesSection {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: Option<bool>,
    pub localhost_node_ports: Option<bool>,
    #[serde(rename = "snatNodeInternalIP")]
    pub snat_node_internal_ip: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpvsSection {
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    pub tcp_timeout: Option<GoDuration>,
    pub tcp_fin_timeout: Option<GoDuration>,
    pub udp_timeout: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NftablesSection {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackSection {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<GoDuration>,
    pub udp_stream_timeout: Option<GoDuration>,
}

/// Conntrack sysctls of the proxy's namespace, as kube-proxy sets them (cmd/kube-proxy/app/
/// server_linux.go): zero or unset leaves a value as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conntrack {
    /// `nf_conntrack_max` = max(maxPerCore × CPUs, min) when maxPerCore > 0.
    pub max_per_core: u32,
    pub min: u32,
    pub tcp_established_timeout: Duration,
    pub tcp_close_wait_timeout: Duration,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Duration,
    pub udp_stream_timeout: Duration,
}

impl Conntrack {
    /// The sysctls to write for a machine with `cpus` CPUs: `(name, value)`.
    pub fn sysctls(&self, cpus: usize) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        if self.max_per_core > 0 {
            let scaled = u64::from(self.max_per_core) * cpus as u64;
            out.push((
                "net.netfilter.nf_conntrack_max",
                scaled.max(u64::from(self.min)),
            ));
        }
        for (name, value) in [
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                self.tcp_established_timeout,
            ),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
                self.tcp_close_wait_timeout,
            ),
            ("net.netfilter.nf_conntrack_udp_timeout", self.udp_timeout),
            (
                "net.netfilter.nf_conntrack_udp_timeout_stream",
                self.udp_stream_timeout,
            ),
        ] {
            if !value.is_zero() {
                out.push((name, value.as_secs().max(1)));
            }
        }
        if self.tcp_be_liberal {
            out.push(("net.netfilter.nf_conntrack_tcp_be_liberal", 1));
        }
        out
    }

    /// Writes the sysctls inside `netns` (only those whose value differs). Returns one message
    /// per failure: `nf_conntrack_max` is read-only outside the root namespace.
    pub async fn apply(&self, netns: &NetNs) -> Vec<String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut failures = Vec::new();
        for (name, value) in self.sysctls(cpus) {
            let mut read = netns.command("sysctl");
            read.args(["-n", name]);
            let current = switchyard_netns::run_checked(&mut read).await;
            if current.is_ok_and(|c| c.trim() == value.to_string()) {
                continue;
            }
            let mut write = netns.command("sysctl");
            write.args(["-qw", &format!("{name}={value}")]);
            if let Err(e) = switchyard_netns::run_checked(&mut write).await {
                failures.push(format!("{name}={value}: {e}"));
            }
        }
        failures
    }
}

/// Everything the proxy runs with, resolved from a configuration file or from flags.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub proxy: ProxyConfig,
    /// `None`: no health server.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `None`: no metrics server.
    pub metrics_bind_address: Option<SocketAddr>,
    pub conntrack: Conntrack,
    /// `clientConnection.kubeconfig` of the file.
    pub kubeconfig: Option<PathBuf>,
    /// Things applied differently than asked (e.g. `mode: ipvs` served by nftables).
    pub warnings: Vec<String>,
}

impl ProxySettings {
    /// `config` with kube-proxy's default listeners and nothing else changed.
    pub fn new(proxy: ProxyConfig) -> Self {
        ProxySettings {
            proxy,
            healthz_bind_address: Some(SocketAddr::from(([0, 0, 0, 0], HEALTHZ_PORT))),
            metrics_bind_address: Some(SocketAddr::from(([127, 0, 0, 1], METRICS_PORT))),
            conntrack: Conntrack::default(),
            kubeconfig: None,
            warnings: Vec::new(),
        }
    }
}

/// Who the proxy is, from outside the file: `--hostname-override` wins over the file's
/// `hostnameOverride` (as kube-proxy), which wins over the host name.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub hostname_override: Option<String>,
    pub host_name: String,
    pub netns: NetNs,
}

/// A bind address flag or field: `""` disables, `IP` gets `default_port`, else `IP:PORT`.
pub fn parse_bind_address(text: &str, default_port: u16) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(Some(SocketAddr::new(ip, default_port))),
        Err(_) => Err(format!("{text:?} is not IP:PORT")),
    }
}

/// One configuration error line, naming the field path.
fn parse_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let inner = inner.lines().next().unwrap_or_default().to_string();
    ConfigError::Parse(if path == "." || path.is_empty() {
        inner
    } else {
        format!("{path}: {inner}")
    })
}

impl KubeProxyConfiguration {
    /// Parses YAML or JSON strictly and checks `kind` and `apiVersion`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: KubeProxyConfiguration =
            serde_path_to_error::deserialize(de).map_err(parse_error)?;
        match config.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => {
                return Err(invalid(
                    "apiVersion",
                    format!("{other:?} is not {API_VERSION}"),
                ))
            }
            None => return Err(invalid("apiVersion", "missing")),
        }
        match config.kind.as_deref() {
            Some(KIND) => {}
            Some(other) => return Err(invalid("kind", format!("{other:?} is not {KIND}"))),
            None => return Err(invalid("kind", "missing")),
        }
        Ok(config)
    }

    fn mode(&self) -> &str {
        self.mode.as_deref().map(str::trim).unwrap_or("")
    }

    /// The sync periods and masquerading as kube-proxy's conversion picks them by mode, with
    /// its defaults for zero values.
    fn periods(&self) -> (Duration, Duration, bool) {
        let iptables = self.iptables.as_ref();
        let (sync, min_sync) = match self.mode() {
            "nftables" => {
                let s = self.nftables.as_ref();
                (
                    s.and_then(|s| s.sync_period),
                    s.and_then(|s| s.min_sync_period),
                )
            }
            "ipvs" => {
                let s = self.ipvs.as_ref();
                (
                    s.and_then(|s| s.sync_period),
                    s.and_then(|s| s.min_sync_period),
                )
            }
            _ => (
                iptables.and_then(|s| s.sync_period),
                iptables.and_then(|s| s.min_sync_period),
            ),
        };
        let masquerade_all = match self.mode() {
            "nftables" => self.nftables.as_ref().and_then(|s| s.masquerade_all),
            _ => iptables.and_then(|s| s.masquerade_all),
        };
        let or = |d: Option<GoDuration>, default: Duration| {
            d.map(|d| d.0).filter(|d| !d.is_zero()).unwrap_or(default)
        };
        (
            // kube-proxy's v1alpha1 defaults: syncPeriod 30s, minSyncPeriod 1s.
            or(sync, Duration::from_secs(30)),
            or(min_sync, Duration::from_secs(1)),
            masquerade_all.unwrap_or(false),
        )
    }

    fn conntrack(&self) -> Result<Conntrack, ConfigError> {
        let Some(c) = &self.conntrack else {
            return Ok(Conntrack::default());
        };
        let non_negative = |field: &str, v: Option<i32>| {
            u32::try_from(v.unwrap_or(0))
                .map_err(|_| invalid(field, "must be greater than or equal to 0"))
        };
        let d = |v: Option<GoDuration>| v.map(|d| d.0).unwrap_or_default();
        Ok(Conntrack {
            max_per_core: non_negative("conntrack.maxPerCore", c.max_per_core)?,
            min: non_negative("conntrack.min", c.min)?,
            tcp_established_timeout: d(c.tcp_established_timeout),
            tcp_close_wait_timeout: d(c.tcp_close_wait_timeout),
            tcp_be_liberal: c.tcp_be_liberal.unwrap_or(false),
            udp_timeout: d(c.udp_timeout),
            udp_stream_timeout: d(c.udp_stream_timeout),
        })
    }

    /// Resolves the file into settings for `node` (see the module docs for the rules). Probes
    /// `nft` in the node's namespace when the mode needs it.
    pub async fn resolve(&self, node: &NodeIdentity) -> Result<ProxySettings, ConfigError> {
        let mut warnings = Vec::new();
        let node_name = node
            .hostname_override
            .as_deref()
            .or(self.hostname_override.as_deref())
            .map(|h| h.trim().to_lowercase())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| node.host_name.clone());
        if node_name.is_empty() {
            return Err(invalid("hostnameOverride", "cannot tell this node's name"));
        }
        let cluster_cidrs = match self.cluster_cidr.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(text) => parse_cluster_cidrs(text).map_err(|m| invalid("clusterCIDR", m))?,
        };
        let mut node_port_addresses = Vec::new();
        for a in self.node_port_addresses.iter().flatten().map(|a| a.trim()) {
            match a {
                "" | "primary" => {}
                // Every address of the namespace, of both families.
                "all" => node_port_addresses.extend([
                    IpNet::V4(ipnet::Ipv4Net::default()),
                    IpNet::V6(ipnet::Ipv6Net::default()),
                ]),
                other => node_port_addresses.push(
                    other
                        .parse::<IpNet>()
                        .map_err(|_| {
                            invalid("nodePortAddresses", format!("{other:?} is not a CIDR"))
                        })?
                        .trunc(),
                ),
            }
        }
        let listener = |field: &str, value: Option<&str>, default: SocketAddr| {
            match value.map(str::trim) {
                // kube-proxy's defaulting: an empty address is the default one.
                None | Some("") => Ok(Some(default)),
                Some(text) => {
                    parse_bind_address(text, default.port()).map_err(|m| invalid(field, m))
                }
            }
        };
        let healthz_bind_address = listener(
            "healthzBindAddress",
            self.healthz_bind_address.as_deref(),
            SocketAddr::from(([0, 0, 0, 0], HEALTHZ_PORT)),
        )?;
        let metrics_bind_address = listener(
            "metricsBindAddress",
            self.metrics_bind_address.as_deref(),
            SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)),
        )?;
        let scheduler_name = self
            .ipvs
            .as_ref()
            .and_then(|s| s.scheduler.as_deref())
            .map(str::trim)
            .unwrap_or("");
        let least_connections = scheduler_name == "lc";
        let scheduler: Scheduler = if least_connections {
            Scheduler::default()
        } else {
            scheduler_name.parse().map_err(|e: String| {
                invalid("ipvs.scheduler", e.replace("use random", "use random, lc"))
            })?
        };
        let userspace = match self.mode() {
            "userspace" => true,
            "" => {
                if let Err(e) = node.netns.nft(&["--version"], None).await {
                    warnings.push(format!(
                        "nft is not available ({e}); using the userspace proxy"
                    ));
                    true
                } else {
                    false
                }
            }
            m @ ("nftables" | "iptables" | "ipvs") => {
                if m != "nftables" {
                    warnings.push(format!(
                        "mode {m:?}: Switchyard serves Services with nftables instead"
                    ));
                }
                node.netns
                    .nft(&["--version"], None)
                    .await
                    .map_err(|e| ConfigError::Unavailable(format!("mode {m:?} needs nft: {e}")))?;
                false
            }
            other => {
                return Err(invalid(
                    "mode",
                    format!("{other:?}: must be \"\", nftables, iptables, ipvs or userspace"),
                ))
            }
        };
        let mode = if userspace {
            ProxyMode::Userspace(match scheduler_name {
                "lc" => Balance::LeastConnections,
                "rr" => Balance::RoundRobin,
                "sh" => Balance::SourceHash,
                _ => Balance::Random,
            })
        } else if least_connections {
            return Err(invalid(
                "ipvs.scheduler",
                "lc (least connections) needs mode userspace",
            ));
        } else {
            ProxyMode::Nftables
        };
        let (sync_period, min_sync_period, masquerade_all) = self.periods();
        Ok(ProxySettings {
            proxy: ProxyConfig {
                node_name,
                netns: node.netns.clone(),
                cluster_cidrs,
                node_port_addresses,
                masquerade_all,
                sync_period,
                min_sync_period,
                scheduler,
                mode,
            },
            healthz_bind_address,
            metrics_bind_address,
            conntrack: self.conntrack()?,
            kubeconfig: self
                .client_connection
                .as_ref()
                .and_then(|c| c.kubeconfig.as_deref())
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(PathBuf::from),
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    fn identity() -> NodeIdentity {
        NodeIdentity {
            hostname_override: None,
            host_name: "host-a".into(),
            netns: NetNs::current(),
        }
    }

    fn err(text: &str) -> String {
        KubeProxyConfiguration::parse(text)
            .map(|_| ())
            .expect_err("must be rejected")
            .to_string()
    }

    const HEAD: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    #[test]
    fn go_durations_parse_as_time_parse_duration() {
        assert_eq!(parse_go_duration("1m0s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "30", "-1s", "1d", "s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn kubeadms_file_loads_with_kube_proxys_defaults() {
        let config = KubeProxyConfiguration::parse(KUBEADM).expect("kubeadm's file");
        let s = config
            .resolve(&NodeIdentity {
                hostname_override: Some("Node-A".into()),
                ..identity()
            })
            .await
            .expect("resolves");
        assert_eq!(s.proxy.node_name, "node-a");
        assert_eq!(s.proxy.sync_period, Duration::from_secs(30));
        assert_eq!(s.proxy.min_sync_period, Duration::from_secs(1));
        assert_eq!(
            s.proxy.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().expect("cidr")]
        );
        assert!(!s.proxy.masquerade_all);
        assert_eq!(s.proxy.scheduler, Scheduler::Random);
        assert_eq!(
            s.healthz_bind_address,
            Some("0.0.0.0:10256".parse().expect("addr"))
        );
        assert_eq!(
            s.metrics_bind_address,
            Some("127.0.0.1:10249".parse().expect("addr"))
        );
        assert_eq!(s.conntrack, Conntrack::default());
        assert!(s.conntrack.sysctls(4).is_empty());
        assert_eq!(
            s.kubeconfig,
            Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
        );
    }

    #[tokio::test]
    async fn the_modes_section_gives_periods_and_masquerading() {
        let text = format!(
            "{HEAD}mode: nftables\nnftables:\n  syncPeriod: 1m0s\n  minSyncPeriod: 250ms\n  masqueradeAll: true\n\
             iptables:\n  syncPeriod: 5s\n  masqueradeAll: false\nipvs:\n  scheduler: rr\n\
             hostnameOverride: from-file\nmetricsBindAddress: 0.0.0.0\nhealthzBindAddress: 127.0.0.1:1234\n"
        );
        let config = KubeProxyConfiguration::parse(&text).expect("parses");
        let Ok(s) = config.resolve(&identity()).await else {
            // No nft on this machine: nftables mode is unavailable, nothing more to check.
            return;
        };
        assert_eq!(s.proxy.node_name, "from-file");
        assert_eq!(s.proxy.sync_period, Duration::from_secs(60));
        assert_eq!(s.proxy.min_sync_period, Duration::from_millis(250));
        assert!(s.proxy.masquerade_all);
        assert_eq!(s.proxy.scheduler, Scheduler::RoundRobin);
        assert_eq!(
            s.metrics_bind_address,
            Some("0.0.0.0:10249".parse().expect("addr"))
        );
        assert_eq!(
            s.healthz_bind_address,
            Some("127.0.0.1:1234".parse().expect("addr"))
        );

        // Any other mode reads the iptables section (kube-proxy's conversion).
        let text = format!("{HEAD}mode: userspace\nnftables:\n  masqueradeAll: true\niptables:\n  syncPeriod: 5s\n");
        let s = KubeProxyConfiguration::parse(&text)
            .expect("parses")
            .resolve(&identity())
            .await
            .expect("resolves");
        assert_eq!(s.proxy.sync_period, Duration::from_secs(5));
        assert!(!s.proxy.masquerade_all);
        assert!(matches!(
            s.proxy.mode,
            ProxyMode::Userspace(Balance::Random)
        ));
    }

    #[test]
    fn conntrack_sysctls_follow_kube_proxy() {
        let text = format!(
            "{HEAD}conntrack:\n  maxPerCore: 32768\n  min: 131072\n  tcpEstablishedTimeout: 24h0m0s\n  tcpCloseWaitTimeout: 1h0m0s\n  udpTimeout: 30s\n  udpStreamTimeout: 5m0s\n  tcpBeLiberal: true\n"
        );
        let c = KubeProxyConfiguration::parse(&text)
            .expect("parses")
            .conntrack()
            .expect("valid");
        assert_eq!(
            c.sysctls(2),
            vec![
                ("net.netfilter.nf_conntrack_max", 131072),
                ("net.netfilter.nf_conntrack_tcp_timeout_established", 86400),
                ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", 3600),
                ("net.netfilter.nf_conntrack_udp_timeout", 30),
                ("net.netfilter.nf_conntrack_udp_timeout_stream", 300),
                ("net.netfilter.nf_conntrack_tcp_be_liberal", 1),
            ]
        );
        assert_eq!(c.sysctls(8)[0], ("net.netfilter.nf_conntrack_max", 262144));
    }

    #[test]
    fn bad_files_are_one_line_naming_the_field() {
        let cases = [
            (format!("{HEAD}nftables:\n  masqueradeEverything: true\n"), "masqueradeEverything"),
            (format!("{HEAD}colour: blue\n"), "colour"),
            (format!("{HEAD}nftables:\n  syncPeriod: soon\n"), "nftables.syncPeriod"),
            (format!("{HEAD}conntrack:\n  min: lots\n"), "conntrack.min"),
            (
                "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n".into(),
                "apiVersion",
            ),
            ("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n".into(), "kind"),
            ("kind: KubeProxyConfiguration\n".into(), "apiVersion"),
            ("{\"apiVersion\": \"kubeproxy.config.k8s.io/v1alpha1\", \"kind\": \"KubeProxyConfiguration\", \"mode\": 3".into(), "line"),
        ];
        for (text, field) in cases {
            let message = err(&text);
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(message.contains(field), "{field}: {message}");
        }
    }

    #[tokio::test]
    async fn bad_values_are_rejected_when_resolved() {
        for (text, field) in [
            ("mode: kernelspace\n", "mode"),
            ("ipvs:\n  scheduler: wlc\n", "ipvs.scheduler"),
            ("mode: nftables\nipvs:\n  scheduler: lc\n", "ipvs.scheduler"),
            ("clusterCIDR: 10.0.0.0/99\n", "clusterCIDR"),
            ("clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n", "clusterCIDR"),
            (
                "clusterCIDR: fd00::/56,fd01::/56,10.0.0.0/8\n",
                "clusterCIDR",
            ),
            ("nodePortAddresses: [nope]\n", "nodePortAddresses"),
            ("metricsBindAddress: here:there\n", "metricsBindAddress"),
            ("conntrack:\n  maxPerCore: -1\n", "conntrack.maxPerCore"),
        ] {
            let config = KubeProxyConfiguration::parse(&format!("{HEAD}{text}")).expect("parses");
            match config.resolve(&identity()).await {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                Err(ConfigError::Unavailable(_)) => {}
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn bind_addresses_take_a_default_port_and_empty_disables() {
        assert_eq!(parse_bind_address("", 1), Ok(None));
        assert_eq!(
            parse_bind_address("0.0.0.0", 10256),
            Ok(Some("0.0.0.0:10256".parse().expect("addr")))
        );
        assert_eq!(
            parse_bind_address("[::1]:9", 1),
            Ok(Some("[::1]:9".parse().expect("addr")))
        );
        assert_eq!(
            parse_bind_address("::", 7),
            Ok(Some("[::]:7".parse().expect("addr")))
        );
        assert!(parse_bind_address("localhost:80", 1).is_err());
    }

    #[test]
    fn cluster_cidrs_are_one_or_a_dual_stack_pair() {
        let net = |s: &str| s.parse::<IpNet>().expect("cidr");
        assert_eq!(
            parse_cluster_cidrs("10.244.0.5/16"),
            Ok(vec![net("10.244.0.0/16")])
        );
        assert_eq!(
            parse_cluster_cidrs("fd00:10:244::/56, 10.244.0.0/16"),
            Ok(vec![net("fd00:10:244::/56"), net("10.244.0.0/16")])
        );
        assert!(parse_cluster_cidrs("10.0.0.0/8,10.1.0.0/16").is_err());
        assert!(parse_cluster_cidrs("fd00::/8,nope").is_err());
    }

    #[tokio::test]
    async fn a_dual_stack_cluster_cidr_gives_each_family_its_own() {
        let config = KubeProxyConfiguration::parse(&format!(
            "{HEAD}clusterCIDR: fd00:10:244::/56,10.244.0.0/16\n"
        ))
        .expect("parses");
        let s = config.resolve(&identity()).await.expect("resolves");
        assert_eq!(
            s.proxy.cluster_cidrs,
            vec![
                "fd00:10:244::/56".parse::<IpNet>().expect("cidr"),
                "10.244.0.0/16".parse().expect("cidr")
            ]
        );
        assert!(s.warnings.iter().all(|w| !w.contains("clusterCIDR")));
        let config = KubeProxyConfiguration::parse(&format!(
            "{HEAD}clusterCIDR: 10.244.0.0/16,10.245.0.0/16\n"
        ))
        .expect("parses");
        let error = config
            .resolve(&identity())
            .await
            .expect_err("two IPv4 CIDRs");
        assert!(error.to_string().contains("clusterCIDR"), "{error}");
    }
}

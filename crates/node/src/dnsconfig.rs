//! A pod's `/etc/resolv.conf` and `/etc/hosts`, as kubelet computes them (pure functions).
//!
//! resolv.conf follows `pkg/kubelet/network/dns/dns.go` (`GetPodDNS`): the pod's DNS type from
//! dnsPolicy (ClusterFirst on the host network falls back to Default; ClusterFirst without a
//! cluster DNS too), the cluster search path `<ns>.svc.<domain> svc.<domain> <domain>` followed by
//! the host's search domains, `options ndots:5`, then the pod's dnsConfig appended
//! (`appendDNSConfig`: duplicates dropped, options merged by name, the pod's value wins), then
//! the limits (`formDNSConfigFitsLimits`: 3 nameservers, 32 search domains of 2048 characters
//! in all). The file is laid out as containerd writes it: `search`, `nameserver`s, `options`.
//!
//! hosts follows `managedHostsFileContent` in `kubelet_pods.go`.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// kubelet's `validation.MaxDNSNameservers`.
const MAX_NAMESERVERS: usize = 3;
/// kubelet's `validation.MaxDNSSearchPaths`.
const MAX_SEARCHES: usize = 32;
/// kubelet's `validation.MaxDNSSearchListChars`.
const MAX_SEARCH_CHARS: usize = 2048;

/// A resolver configuration: what a resolv.conf holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

impl DnsConfig {
    /// Parse a resolv.conf as kubelet's `parseResolvConf` does: every `nameserver`, the last
    /// `search` line (trailing dots dropped, `.` skipped), every `options` (later ones replace
    /// same-named earlier ones).
    pub fn parse(text: &str) -> DnsConfig {
        let mut config = DnsConfig::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.first() {
                Some(&"nameserver") => {
                    if let Some(server) = fields.get(1) {
                        config.servers.push(server.to_string());
                    }
                }
                Some(&"search") => {
                    config.searches = fields[1..]
                        .iter()
                        .filter(|s| **s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some(&"options") => {
                    for option in &fields[1..] {
                        let name = option_name(option);
                        config.options.retain(|o| option_name(o) != name);
                        config.options.push(option.to_string());
                    }
                }
                _ => {}
            }
        }
        config
    }

    /// The file text (containerd's layout).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.servers {
            out.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn option_name(option: &str) -> &str {
    option.split(':').next().unwrap_or(option)
}

/// `omitDuplicates`, keeping the first occurrence.
fn omit_duplicates(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// The pod's resolver configuration (see the module doc). `host_resolv_conf` is the text of the
/// node's resolv.conf (kubelet's `--resolv-conf`); `None` means kubelet's `--resolv-conf=""`
/// (Default then means `nameserver 127.0.0.1`, `search .`).
pub fn pod_dns_config(
    pod: &Pod,
    cluster_dns: &[IpAddr],
    cluster_domain: &str,
    host_resolv_conf: Option<&str>,
) -> DnsConfig {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host = host_resolv_conf.map(DnsConfig::parse).unwrap_or_default();
    let mut config = match policy {
        "None" => DnsConfig::default(),
        "ClusterFirstWithHostNet" | "ClusterFirst"
            if (policy != "ClusterFirst" || !host_network) && !cluster_dns.is_empty() =>
        {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let searches = if cluster_domain.is_empty() {
                host.searches
            } else {
                let mut searches = vec![
                    format!("{namespace}.svc.{cluster_domain}"),
                    format!("svc.{cluster_domain}"),
                    cluster_domain.to_string(),
                ];
                searches.extend(host.searches);
                omit_duplicates(searches)
            };
            DnsConfig {
                servers: cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
        // Default, ClusterFirst on the host network, or no cluster DNS known.
        _ => {
            if host_resolv_conf.is_none() {
                DnsConfig {
                    servers: vec!["127.0.0.1".to_string()],
                    searches: vec![".".to_string()],
                    options: host.options,
                }
            } else {
                host
            }
        }
    };
    if let Some(pod_config) = spec.and_then(|s| s.dns_config.as_ref()) {
        let mut servers = std::mem::take(&mut config.servers);
        servers.extend(pod_config.nameservers.iter().flatten().cloned());
        config.servers = omit_duplicates(servers);
        let mut searches = std::mem::take(&mut config.searches);
        searches.extend(pod_config.searches.iter().flatten().cloned());
        config.searches = omit_duplicates(searches);
        // mergeDNSOptions: by name, the pod's value wins. kubelet's output order is a Go map
        // iteration (random); ours is the order of first appearance.
        let mut merged: Vec<(String, String)> = Vec::new();
        let mut put = |name: &str, value: &str| {
            match merged.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = value.to_string(),
                None => merged.push((name.to_string(), value.to_string())),
            };
        };
        for option in &config.options {
            match option.split_once(':') {
                Some((n, v)) => put(n, v),
                None => put(option, ""),
            }
        }
        for option in pod_config.options.iter().flatten() {
            put(
                option.name.as_deref().unwrap_or_default(),
                option.value.as_deref().unwrap_or_default(),
            );
        }
        config.options = merged
            .into_iter()
            .map(|(n, v)| if v.is_empty() { n } else { format!("{n}:{v}") })
            .collect();
    }
    // formDNSConfigFitsLimits.
    config.servers.truncate(MAX_NAMESERVERS);
    config.searches.truncate(MAX_SEARCHES);
    while config.searches.iter().map(String::len).sum::<usize>() + config.searches.len()
        > MAX_SEARCH_CHARS + 1
    {
        config.searches.pop();
    }
    config
}

/// The pod's resolv.conf text (see [`pod_dns_config`]).
pub fn resolv_conf(
    pod: &Pod,
    cluster_dns: &[IpAddr],
    cluster_domain: &str,
    host_resolv_conf: Option<&str>,
) -> String {
    pod_dns_config(pod, cluster_dns, cluster_domain, host_resolv_conf).render()
}

/// kubelet's `GeneratePodHostNameAndDomain`: the hostname (spec.hostname or the pod's name,
/// cut to 63 characters) and the domain `<subdomain>.<ns>.svc.<cluster domain>` when
/// spec.subdomain is set.
pub fn pod_hostname_and_domain(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let mut hostname = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if hostname.len() > 63 {
        // As kubelet's truncatePodHostnameIfNeeded: cut, then drop trailing '-' and '.'.
        hostname.truncate(63);
        while hostname.ends_with(['-', '.']) {
            hostname.pop();
        }
    }
    let domain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
        .map(|sub| {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            format!("{sub}.{ns}.svc.{cluster_domain}")
        });
    (hostname, domain)
}

/// The pod's `/etc/hosts` (kubelet's `managedHostsFileContent`): header, localhost lines, one
/// line per pod IP (`ip\thostname` or `ip\thostname.domain\thostname`), then hostAliases.
pub fn hosts_file(pod: &Pod, pod_ips: &[IpAddr], cluster_domain: &str) -> String {
    let (hostname, domain) = pod_hostname_and_domain(pod, cluster_domain);
    let mut out = String::from("# Kubernetes-managed hosts file.\n");
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        match &domain {
            Some(domain) => out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# host\nnameserver 192.168.0.1\nnameserver 192.168.0.2\nsearch corp.example. lab.example .\noptions rotate timeout:2\n";
    const DNS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10))];

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(
            json!({"metadata": {"namespace": "web", "name": "p1"}, "spec": spec}),
        )
        .expect("pod")
    }

    #[test]
    fn resolv_conf_table() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "ClusterFirst (default policy)",
                json!({}),
                "search web.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\noptions ndots:5\n",
            ),
            (
                "ClusterFirst on the host network falls back to Default",
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirst"}),
                "search corp.example lab.example\nnameserver 192.168.0.1\nnameserver 192.168.0.2\noptions rotate timeout:2\n",
            ),
            (
                "ClusterFirstWithHostNet",
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
                "search web.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\noptions ndots:5\n",
            ),
            (
                "Default",
                json!({"dnsPolicy": "Default"}),
                "search corp.example lab.example\nnameserver 192.168.0.1\nnameserver 192.168.0.2\noptions rotate timeout:2\n",
            ),
            (
                "None with dnsConfig",
                json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
                "search a.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n",
            ),
            (
                "ClusterFirst merged with dnsConfig (duplicates dropped, pod option wins)",
                json!({"dnsConfig": {"nameservers": ["10.96.0.10", "8.8.8.8"], "searches": ["svc.cluster.local", "x.example"], "options": [{"name": "ndots", "value": "1"}, {"name": "single-request-reopen"}]}}),
                "search web.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example x.example\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:1 single-request-reopen\n",
            ),
            (
                "at most three nameservers",
                json!({"dnsConfig": {"nameservers": ["1.0.0.1", "1.0.0.2", "1.0.0.3"]}}),
                "search web.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\nnameserver 1.0.0.1\nnameserver 1.0.0.2\noptions ndots:5\n",
            ),
        ];
        for (what, spec, want) in cases {
            assert_eq!(
                resolv_conf(&pod(spec.clone()), DNS, "cluster.local", Some(HOST)),
                *want,
                "{what}"
            );
        }
    }

    #[test]
    fn no_cluster_dns_or_no_host_resolv_conf() {
        // ClusterFirst without a cluster DNS: kubelet falls back to Default.
        assert_eq!(
            resolv_conf(&pod(json!({})), &[], "cluster.local", Some(HOST)),
            "search corp.example lab.example\nnameserver 192.168.0.1\nnameserver 192.168.0.2\noptions rotate timeout:2\n"
        );
        // Default with kubelet's --resolv-conf="".
        assert_eq!(
            resolv_conf(
                &pod(json!({"dnsPolicy": "Default"})),
                DNS,
                "cluster.local",
                None
            ),
            "search .\nnameserver 127.0.0.1\n"
        );
        // ClusterFirst with an empty host resolv.conf.
        assert_eq!(
            resolv_conf(&pod(json!({})), DNS, "cluster.local", Some("")),
            "search web.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_file_table() {
        let ip: IpAddr = "10.244.1.7".parse().expect("ip");
        let header = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";
        let cases: &[(&str, serde_json::Value, String)] = &[
            ("plain", json!({}), format!("{header}10.244.1.7\tp1\n")),
            (
                "hostname",
                json!({"hostname": "db-0"}),
                format!("{header}10.244.1.7\tdb-0\n"),
            ),
            (
                "hostname and subdomain",
                json!({"hostname": "db-0", "subdomain": "db"}),
                format!("{header}10.244.1.7\tdb-0.db.web.svc.cluster.local\tdb-0\n"),
            ),
            (
                "hostAliases",
                json!({"hostAliases": [{"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]}, {"ip": "10.1.2.3", "hostnames": ["foo.remote"]}]}),
                format!(
                    "{header}10.244.1.7\tp1\n\n# Entries added by HostAliases.\n127.0.0.1\tfoo.local\tbar.local\n10.1.2.3\tfoo.remote\n"
                ),
            ),
        ];
        for (what, spec, want) in cases {
            assert_eq!(
                hosts_file(&pod(spec.clone()), &[ip], "cluster.local"),
                *want,
                "{what}"
            );
        }
    }

    #[test]
    fn long_hostnames_are_cut_like_kubelet() {
        let name = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        let p = pod(json!({"hostname": name}));
        assert_eq!(
            pod_hostname_and_domain(&p, "cluster.local").0,
            "a".repeat(62)
        );
    }
}

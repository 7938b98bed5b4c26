//! The server's certificates and the admin kubeconfig, kept in the data directory.
//!
//! On first start a cluster CA is generated; the serving certificate and the admin client
//! certificate are signed by it. Later starts reuse the CA (so issued kubeconfigs keep working)
//! and re-issue the serving certificate only when the set of names it must cover changed. Keys are
//! written with mode 0600. This module never talks to the network.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The PEM material the server needs to run and to hand out.
pub struct Pki {
    pub ca_cert_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The controller manager's client certificate ([`CONTROLLER_MANAGER_USER`]).
    pub controller_manager_cert_pem: String,
    pub controller_manager_key_pem: String,
    /// The client certificate the API server presents to kubelet endpoints
    /// ([`switchyard_api::node::KUBELET_CLIENT_USER`]).
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

/// The user the controller manager authenticates as (kube-controller-manager's name). Some
/// writes are reserved to it: see `Registry`'s load-balancer status check.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

fn write_private(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "switchyard-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// The names the serving certificate covers, in a stable textual form (stored beside it, so a
/// change of bind address re-issues it).
fn serving_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Load the PKI from `dir`, creating what is missing. `extra_names` are further DNS names or IPs
/// the serving certificate must cover (bind and advertise addresses, the `kubernetes` service IP).
pub fn load_or_create(dir: &Path, extra_names: &[String]) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let (ca_cert_pem, ca_key_pem) = match (read(&ca_cert_path), read(&ca_key_path)) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            write_private(&ca_cert_path, &cert.pem())?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).context("parsing ca.crt")?;

    let names = serving_names(extra_names);
    let names_path = dir.join("serving.names");
    let serving_cert_path = dir.join("serving.crt");
    let serving_key_path = dir.join("serving.key");
    let wanted = names.join("\n");
    let (serving_cert_pem, serving_key_pem) = match (
        read(&serving_cert_path),
        read(&serving_key_path),
        read(&names_path),
    ) {
        (Some(c), Some(k), Some(n)) if n == wanted => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "switchyard-apiserver");
            p.distinguished_name = dn;
            p.subject_alt_names = names
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
                })
                .collect::<Result<Vec<_>, rcgen::Error>>()?;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let cert = p.signed_by(&key, &issuer)?;
            write_private(&serving_key_path, &key.serialize_pem())?;
            write_private(&serving_cert_path, &cert.pem())?;
            write_private(&names_path, &wanted)?;
            (cert.pem(), key.serialize_pem())
        }
    };

    let (admin_cert_pem, admin_key_pem) =
        client_pair(dir, "admin", &issuer, "admin", &["system:masters"])?;
    let (controller_manager_cert_pem, controller_manager_key_pem) = client_pair(
        dir,
        "controller-manager",
        &issuer,
        CONTROLLER_MANAGER_USER,
        &[],
    )?;
    let (kubelet_client_cert_pem, kubelet_client_key_pem) = client_pair(
        dir,
        "apiserver-kubelet-client",
        &issuer,
        switchyard_api::node::KUBELET_CLIENT_USER,
        &[],
    )?;
    Ok(Pki {
        ca_cert_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        controller_manager_cert_pem,
        controller_manager_key_pem,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
    })
}

/// The client certificate kept as `DIR/STEM.crt` and `DIR/STEM.key`, issued on first use.
fn client_pair(
    dir: &Path,
    stem: &str,
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String)> {
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    if let (Some(c), Some(k)) = (read(&cert_path), read(&key_path)) {
        return Ok((c, k));
    }
    let (c, k) = issue_client_cert(issuer, user, groups)?;
    write_private(&key_path, &k)?;
    write_private(&cert_path, &c)?;
    Ok((c, k))
}

/// A client certificate for `user` in `groups` (CN and O, as Kubernetes' x509 authenticator reads
/// them), signed by the cluster CA. Returns (cert PEM, key PEM).
pub fn issue_client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write a kubeconfig for `server` authenticating with the given client certificate.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<PathBuf> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: switchyard\n  context:\n    cluster: switchyard\n    user: {user}\n    namespace: default\ncurrent-context: switchyard\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    );
    write_private(path, &text)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_reused_across_starts_and_reissued_when_names_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create(dir.path(), &[]).expect("first start");
        let b = load_or_create(dir.path(), &[]).expect("second start");
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        let c = load_or_create(dir.path(), &["10.1.2.3".to_string()]).expect("new name");
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
    }
}

//! The node's kubelet endpoint: the HTTPS server the API server calls for `pods/log`
//! (`GET /containerLogs/NS/POD/CONTAINER`, kubelet's path and query), and `/healthz`.
//!
//! Clients must present a certificate from the cluster CA (the one in the node's kubeconfig)
//! for the API server's kubelet client user or the `system:masters` group; anyone else gets 403.
//! The serving certificate is self-signed and made at start, as kubelet does without
//! `--tls-cert-file` (the API server does not verify it).
//!
//! `GET /exec/NS/POD/CONTAINER?command=..&stdin=..&stdout=..&stderr=..&tty=..` upgrades to a
//! WebSocket speaking Kubernetes' remote command protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io`): binary messages whose first byte is the stream (0 stdin, 1 stdout,
//! 2 stderr, 3 the final Status, 4 terminal resize, 255 "stream closed" in v5). The command runs
//! in the pod's namespaces (network, UTS, mount: `nsenter` into the sandbox's infra process);
//! with `tty` it gets a pseudo-terminal as its controlling terminal.
//!
//! Logs are found on disk by their layout (`logs::container_log_path`): the newest pod directory
//! of that namespace and name, the highest restart count (the one before it for `previous`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::logs::{read_logs, LogOptions};
use crate::sandbox::Sandbox;

/// Finds the running sandbox of a pod by namespace and name (for exec).
pub type SandboxLookup = Arc<dyn Fn(&str, &str) -> Option<Sandbox> + Send + Sync>;

type Body = BoxBody<Bytes, Infallible>;

/// A running kubelet endpoint; dropping it stops the server and its connections.
pub struct KubeletServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeletServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeletServer {
    /// Serve on `listener` the logs under `root_dir`, for clients certified by `client_ca_pem`.
    pub fn start(
        listener: tokio::net::TcpListener,
        root_dir: PathBuf,
        node_name: &str,
        client_ca_pem: &[u8],
        sandboxes: SandboxLookup,
    ) -> anyhow::Result<KubeletServer> {
        let addr = listener.local_addr()?;
        let acceptor = tls_acceptor(node_name, addr, client_ca_pem)?;
        let root = Arc::new(root_dir);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    Some(_) = connections.join_next() => continue,
                };
                let Ok((tcp, _peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let root = root.clone();
                let sandboxes = sandboxes.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let allowed = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .is_some_and(|c| is_allowed_client(c.as_ref()));
                    let service = hyper::service::service_fn(move |req| {
                        let root = root.clone();
                        let sandboxes = sandboxes.clone();
                        async move {
                            Ok::<_, Infallible>(serve(&root, &sandboxes, allowed, req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(KubeletServer { addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The API server's kubelet client, or an administrator.
fn is_allowed_client(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .any(|a| a.as_str() == Ok(switchyard_api::node::KUBELET_CLIENT_USER));
    let masters = subject
        .iter_organization()
        .any(|a| a.as_str() == Ok("system:masters"));
    cn || masters
}

fn tls_acceptor(
    node_name: &str,
    addr: SocketAddr,
    client_ca_pem: &[u8],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut names = vec![node_name.to_string()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let cert = rcgen::generate_simple_self_signed(names)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let key = PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn serve(
    root: &Path,
    sandboxes: &SandboxLookup,
    allowed: bool,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if !allowed {
        return text(StatusCode::FORBIDDEN, "Forbidden\n");
    }
    if let Some(rest) = path.strip_prefix("/exec/") {
        return crate::exec::serve(rest, sandboxes, req);
    }
    let Some(rest) = path.strip_prefix("/containerLogs/") else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [ns, pod, container] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let query = parse_query(req.uri().query().unwrap_or(""));
    let (opts, previous) = match log_options(&query) {
        Ok(o) => o,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let Some(file) = find_log(root, ns, pod, container, previous) else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" has no logs")
        };
        return text(StatusCode::NOT_FOUND, msg);
    };
    let stream = read_logs(&file, opts).map(|chunk| match chunk {
        Ok(b) => Ok::<_, Infallible>(Frame::data(b)),
        Err(e) => Ok(Frame::data(Bytes::from(format!(
            "\nerror reading logs: {e}\n"
        )))),
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match bytes.get(i + 1..i + 3) {
                Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let hex = [*h, *l];
                    let text = std::str::from_utf8(&hex).unwrap_or("00");
                    out.push(u8::from_str_radix(text, 16).unwrap_or(0));
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// kubelet's log options from the query; `previous` separately (it picks the file).
fn log_options(query: &[(String, String)]) -> Result<(LogOptions, bool), String> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let flag = |k: &str| get(k).is_some_and(|v| v == "true" || v == "1");
    let number = |k: &str| -> Result<Option<u64>, String> {
        match get(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{k}: not a non-negative integer: {v:?}\n")),
        }
    };
    let mut since_seconds = number("sinceSeconds")?;
    if let Some(t) = get("sinceTime") {
        let ts: jiff::Timestamp = t.parse().map_err(|e| format!("sinceTime: {e}: {t:?}\n"))?;
        let ago = jiff::Timestamp::now().as_second() - ts.as_second();
        since_seconds = Some(u64::try_from(ago.max(0)).unwrap_or(0));
    }
    Ok((
        LogOptions {
            follow: flag("follow"),
            tail_lines: number("tailLines")?,
            since_seconds,
            timestamps: flag("timestamps"),
            limit_bytes: number("limitBytes")?,
        },
        flag("previous"),
    ))
}

/// The log file of a container, by the on-disk layout: the most recently modified pod directory
/// `<root>/pods/<ns>_<pod>_<uid>`, then the highest restart count (or the one before it).
fn find_log(root: &Path, ns: &str, pod: &str, container: &str, previous: bool) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    let pod_dir = std::fs::read_dir(root.join("pods"))
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|uid| !uid.contains('_'))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?
        .path();
    let mut restarts: Vec<u32> = std::fs::read_dir(pod_dir.join(container))
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    restarts.sort_unstable();
    let pick = if previous {
        restarts.len().checked_sub(2).map(|i| restarts[i])
    } else {
        restarts.last().copied()
    }?;
    Some(pod_dir.join(container).join(format!("{pick}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("follow=true&tailLines=5&sinceTime=2026-01-01T00%3A00%3A00Z&x=a+b");
        assert_eq!(q[2].1, "2026-01-01T00:00:00Z");
        assert_eq!(q[3].1, "a b");
        let (opts, previous) = log_options(&q).expect("options");
        assert!(opts.follow && !previous);
        assert_eq!(opts.tail_lines, Some(5));
        assert!(opts.since_seconds.is_some());
        assert!(log_options(&parse_query("tailLines=-1")).is_err());
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn finds_the_newest_pod_dir_and_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = dir.path().join("pods/default_web_uid1/app");
        std::fs::create_dir_all(&c).expect("mkdir");
        for n in [0, 1, 2] {
            std::fs::write(c.join(format!("{n}.log")), "x").expect("write");
        }
        // Another pod whose name starts the same must not match.
        std::fs::create_dir_all(dir.path().join("pods/default_web_x_uid2/app")).expect("mkdir");
        assert_eq!(
            find_log(dir.path(), "default", "web", "app", false),
            Some(c.join("2.log"))
        );
        assert_eq!(
            find_log(dir.path(), "default", "web", "app", true),
            Some(c.join("1.log"))
        );
        assert_eq!(find_log(dir.path(), "default", "web", "other", false), None);
        assert_eq!(find_log(dir.path(), "default", "nope", "app", false), None);
    }
}

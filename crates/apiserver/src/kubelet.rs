//! The API server's side of node kubelet endpoints (served by `switchyard node`): `pods/log` is
//! answered by streaming the node's `/containerLogs/NS/POD/CONTAINER`, as kube-apiserver does.
//!
//! The API server presents the client certificate of
//! [`switchyard_api::node::KUBELET_CLIENT_USER`] (issued by the cluster CA) and, like
//! kube-apiserver without `--kubelet-certificate-authority`, does not verify the node's serving
//! certificate: nodes make their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use switchyard_api::status::StatusError;

/// How long connecting to a node may take before `pods/log` fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct KubeletClient {
    connector: tokio_rustls::TlsConnector,
}

/// A streamed answer from a node.
pub struct KubeletResponse {
    pub status: StatusCode,
    pub content_type: String,
    pub body: tokio::sync::mpsc::Receiver<Bytes>,
}

impl KubeletClient {
    pub fn new(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_client_auth_cert(certs, key)?;
        Ok(KubeletClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// `GET path_and_query` on the node at `addr`; the body is streamed as it arrives (a
    /// `follow` stream ends when the node ends it or the receiver is dropped).
    pub async fn get(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<KubeletResponse, StatusError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            StatusError::internal(format!("cannot reach the node's kubelet at {addr}: {e}"))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(&"connection timed out"))?
            .map_err(|e| unreachable(&e))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path_and_query)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| StatusError::bad_request(format!("bad kubelet request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/plain")
            .to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            // Ends when the node ends the body, or when the client goes away (send fails).
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    if tx.send(data).await.is_err() {
                        break;
                    }
                }
            }
            drop(sender);
            conn.abort();
        });
        Ok(KubeletResponse {
            status,
            content_type,
            body: rx,
        })
    }
    /// Proxy an upgrade request (`pods/exec`, `pods/attach`, `pods/portforward`) to the node
    /// at `addr`, as kube-apiserver's upgrade-aware proxy does: the client's upgrade headers go
    /// to the node; when the node switches protocols, the same 101 goes back to the client and
    /// the two connections are joined byte for byte.
    pub async fn upgrade(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
        mut client_req: Request<hyper::body::Incoming>,
    ) -> Result<http::Response<crate::server::Body>, StatusError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            StatusError::internal(format!("cannot reach the node's kubelet at {addr}: {e}"))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(&"connection timed out"))?
            .map_err(|e| unreachable(&e))?;
        let tls = self
            .connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn.with_upgrades());
        let mut out = Request::get(path_and_query)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| StatusError::bad_request(format!("bad kubelet request: {e}")))?;
        for (name, value) in client_req.headers() {
            let n = name.as_str();
            if matches!(n, "connection" | "upgrade")
                || n.starts_with("sec-websocket-")
                || n == "x-stream-protocol-version"
            {
                out.headers_mut().append(name.clone(), value.clone());
            }
        }
        let mut resp = sender
            .send_request(out)
            .await
            .map_err(|e| unreachable(&e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(StatusError::bad_request(format!(
                "the node refused the upgrade ({status}): {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let node_side = hyper::upgrade::on(&mut resp);
        let client_side = hyper::upgrade::on(&mut client_req);
        tokio::spawn(async move {
            let (Ok(node_io), Ok(client_io)) = (node_side.await, client_side.await) else {
                return;
            };
            let mut node_io = TokioIo::new(node_io);
            let mut client_io = TokioIo::new(client_io);
            let _ = tokio::io::copy_bidirectional(&mut client_io, &mut node_io).await;
        });
        let mut reply = http::Response::new(
            http_body_util::Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        );
        *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *reply.headers_mut() = resp.headers().clone();
        Ok(reply)
    }
}

/// The container an exec/attach request names (kubectl always names one), checked against the
/// pod as kube-apiserver does.
pub fn stream_container(pod: &Value, container: Option<&str>) -> Result<String, StatusError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Err(StatusError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let containers: Vec<&str> = [
        "/spec/containers",
        "/spec/initContainers",
        "/spec/ephemeralContainers",
    ]
    .iter()
    .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
    .flatten()
    .filter_map(|c| c.get("name").and_then(Value::as_str))
    .collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => match containers.as_slice() {
            [only] => only,
            _ => {
                return Err(StatusError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )))
            }
        },
    };
    check_container_on_node(pod, name, &[containers.as_slice()], container)?;
    Ok(container.to_string())
}

/// kube-apiserver's checks before reaching a container through its node: the container is the
/// pod's and the pod is bound to a node.
fn check_container_on_node(
    pod: &Value,
    name: &str,
    known: &[&[impl AsRef<str>]],
    container: &str,
) -> Result<(), StatusError> {
    if !known
        .iter()
        .any(|set| set.iter().any(|c| c.as_ref() == container))
    {
        return Err(StatusError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(StatusError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(())
}

/// Checks of a `pods/log` request against the pod, with kube-apiserver's messages; the
/// container whose logs are asked for.
pub fn log_container(pod: &Value, query_container: Option<&str>) -> Result<String, StatusError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let names = |path: &str| -> Vec<String> {
        pod.pointer(path)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("/spec/containers");
    let init = names("/spec/initContainers");
    let container = match query_container.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => {
            let default = pod
                .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
                .and_then(Value::as_str);
            match (default, containers.as_slice()) {
                (Some(d), _) => d.to_string(),
                (None, [only]) => only.clone(),
                _ => {
                    let mut msg = format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        containers.join(" ")
                    );
                    if !init.is_empty() {
                        msg.push_str(&format!(
                            " or one of the init containers: [{}]",
                            init.join(" ")
                        ));
                    }
                    return Err(StatusError::bad_request(msg));
                }
            }
        }
    };
    check_container_on_node(
        pod,
        name,
        &[containers.as_slice(), init.as_slice()],
        &container,
    )?;
    // A container that has never run has no log yet.
    let statuses = ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(container.as_str()));
    let waiting = |s: &Value| {
        s.pointer("/state/waiting").is_some()
            && s.pointer("/lastState/terminated").is_none()
            && s.get("restartCount").and_then(Value::as_i64).unwrap_or(0) == 0
    };
    match statuses {
        None => Err(StatusError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        ))),
        Some(s) if waiting(s) => {
            let reason = s
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .unwrap_or("ContainerCreating");
            Err(StatusError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            )))
        }
        Some(_) => Ok(container),
    }
}

/// The kubelet query for a `pods/log` request: the log options kubectl sends, passed through.
pub fn log_query(q: &std::collections::HashMap<String, String>) -> Result<String, StatusError> {
    let mut out = Vec::new();
    for key in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        let Some(v) = q.get(key) else { continue };
        let numeric = matches!(key, "tailLines" | "sinceSeconds" | "limitBytes");
        if numeric
            && v.parse::<i64>()
                .map_or(true, |n| n < 0 || (n == 0 && key != "tailLines"))
        {
            return Err(StatusError::bad_request(format!(
                "{key}: must be {}: {v:?}",
                if key == "tailLines" {
                    "a non-negative integer"
                } else {
                    "a positive integer"
                }
            )));
        }
        out.push(format!("{key}={}", urlencode(v)));
    }
    Ok(out.join("&"))
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Accepts any server certificate (kube-apiserver's default towards kubelets); signatures are
/// still checked so the TLS session itself is sound.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], statuses: Value) -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()},
            "status": {"containerStatuses": statuses},
        })
    }

    #[test]
    fn container_choice_and_messages() {
        let running = json!([{"name": "a", "state": {"running": {}}, "restartCount": 0},
                              {"name": "b", "state": {"running": {}}, "restartCount": 0}]);
        assert_eq!(
            log_container(&pod(&["a"], running.clone()), None).expect("only one"),
            "a"
        );
        let err = log_container(&pod(&["a", "b"], running.clone()), None).expect_err("ambiguous");
        assert!(
            err.message
                .contains("a container name must be specified for pod p, choose one of: [a b]"),
            "{}",
            err.message
        );
        assert_eq!(
            log_container(&pod(&["a", "b"], running.clone()), Some("b")).expect("b"),
            "b"
        );
        let err = log_container(&pod(&["a"], running), Some("c")).expect_err("unknown");
        assert!(err.message.contains("container c is not valid for pod p"));
        let waiting = json!([{"name": "a", "state": {"waiting": {"reason": "ErrImagePull"}}, "restartCount": 0}]);
        let err = log_container(&pod(&["a"], waiting), None).expect_err("waiting");
        assert!(
            err.message
                .contains("container \"a\" in pod \"p\" is waiting to start: ErrImagePull"),
            "{}",
            err.message
        );
        let mut unscheduled = pod(&["a"], json!([]));
        unscheduled["spec"]["nodeName"] = json!(null);
        let err = log_container(&unscheduled, None).expect_err("no node");
        assert!(err.message.contains("does not have a host assigned"));
    }

    #[test]
    fn query_passes_log_options_and_rejects_bad_numbers() {
        let q: std::collections::HashMap<String, String> = [
            ("follow", "true"),
            ("tailLines", "10"),
            ("container", "a"),
            ("sinceTime", "2026-01-01T00:00:00Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            log_query(&q).expect("query"),
            "follow=true&tailLines=10&sinceTime=2026-01-01T00%3A00%3A00Z"
        );
        let bad: std::collections::HashMap<String, String> =
            [("limitBytes".to_string(), "0".to_string())]
                .into_iter()
                .collect();
        assert!(log_query(&bad).is_err());
    }
}

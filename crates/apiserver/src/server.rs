//! The HTTPS front: TLS with optional client certificates, HTTP/1.1 and HTTP/2, authentication,
//! the public endpoints (`/healthz`, `/livez`, `/readyz`, `/version`), discovery and OpenAPI, and
//! dispatch of resource requests to [`crate::handlers`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use switchyard_api::status::StatusError;
use switchyard_api::{discovery, openapi};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{self, TokenFile, User};
use crate::codec;
use crate::handlers::{self, Reply, RequestParts};
use crate::registry::Registry;
use crate::request::{self, Route};

pub type Body = BoxBody<Bytes, Infallible>;

/// Shared state of the HTTP front.
pub struct Front {
    pub registry: Arc<Registry>,
    pub tokens: TokenFile,
    pub server_address: String,
    pub bookmark_interval: Duration,
    pub kubelet: crate::kubelet::KubeletClient,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn respond(code: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    resp
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    respond(
        code,
        serde_json::to_vec(v).unwrap_or_default(),
        "application/json",
    )
}

pub fn error_response(e: &StatusError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}

/// The version this server reports: the Kubernetes API level it implements.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-switchyard.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

impl Front {
    fn authenticate(&self, req: &Request<Incoming>, cert_user: Option<&User>) -> Option<User> {
        if let Some(u) = cert_user {
            return Some(u.clone());
        }
        let h = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))?;
        self.tokens.authenticate(token.trim())
    }

    pub async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        cert_user: Option<User>,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let started = std::time::Instant::now();
        let resp = self.dispatch(req, cert_user.as_ref()).await;
        tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
        resp
    }

    async fn dispatch(&self, req: Request<Incoming>, cert_user: Option<&User>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/healthz" | "/livez" | "/readyz" => {
                return respond(StatusCode::OK, b"ok".to_vec(), "text/plain; charset=utf-8")
            }
            // Clients ask for both (the Python client uses `/version/`); system:public-info-viewer
            // lets anyone read either.
            "/version" | "/version/" => return json_response(StatusCode::OK, &version_info()),
            _ => {}
        }
        let Some(user) = self.authenticate(&req, cert_user) else {
            return error_response(&StatusError::unauthorized());
        };
        tracing::trace!(user = %user.name, %path, "authenticated");
        let accept = header_str(&req, header::ACCEPT).to_string();
        let query = request::parse_query(req.uri().query());
        if path == "/openapi/v3" || path == "/openapi/v3/" {
            return json_response(StatusCode::OK, &openapi::v3_root());
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            return match openapi::v3_document_bytes(gv) {
                Some(doc) => {
                    let mut resp = respond(StatusCode::OK, doc.to_vec(), "application/json");
                    if let Some(etag) = openapi::v3_document_hash(gv)
                        .and_then(|h| HeaderValue::from_str(&format!("\"{h}\"")).ok())
                    {
                        resp.headers_mut().insert(header::ETAG, etag);
                    }
                    resp
                }
                None => error_response(&StatusError::no_route(&path)),
            };
        }
        if path == "/openapi/v2" {
            return match openapi::v2_negotiate(&accept) {
                Some(openapi::V2Format::Protobuf) => respond(
                    StatusCode::OK,
                    openapi::v2_protobuf().to_vec(),
                    openapi::OPENAPI_V2_PROTOBUF_CONTENT_TYPE,
                ),
                Some(openapi::V2Format::Json) => {
                    json_response(StatusCode::OK, &openapi::v2_document())
                }
                None => error_response(&StatusError::not_acceptable(
                    "/openapi/v2 is served as application/json or protobuf",
                )),
            };
        }
        if !(path == "/api"
            || path.starts_with("/api/")
            || path == "/apis"
            || path.starts_with("/apis/"))
        {
            return error_response(&StatusError::no_route(&path));
        }
        match request::route(&path) {
            Route::LegacyRoot => {
                if let Some(ct) = discovery::wants_aggregated(&accept) {
                    return respond(
                        StatusCode::OK,
                        serde_json::to_vec(&discovery::aggregated_discovery(true))
                            .unwrap_or_default(),
                        ct,
                    );
                }
                json_response(
                    StatusCode::OK,
                    &discovery::api_versions(&self.server_address),
                )
            }
            Route::GroupsRoot => {
                if let Some(ct) = discovery::wants_aggregated(&accept) {
                    return respond(
                        StatusCode::OK,
                        serde_json::to_vec(&discovery::aggregated_discovery(false))
                            .unwrap_or_default(),
                        ct,
                    );
                }
                json_response(StatusCode::OK, &discovery::api_group_list())
            }
            Route::Group(g) => match discovery::api_group(&g) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => error_response(&StatusError::no_route(&path)),
            },
            Route::GroupVersion(g, v) => match discovery::api_resource_list(&g, &v) {
                Some(doc) => json_response(StatusCode::OK, &doc),
                None => error_response(&StatusError::no_route(&path)),
            },
            Route::Unknown => error_response(&StatusError::no_route(&path)),
            Route::Resource(rr)
                if rr.resource.kind == "Pod"
                    && rr.resource.group.is_empty()
                    && matches!(
                        rr.subresource.as_deref(),
                        Some("exec" | "attach" | "portforward")
                    ) =>
            {
                match handlers::pod_stream(&self.registry, &self.kubelet, &rr, req).await {
                    Ok(resp) => resp,
                    Err(e) => error_response(&e),
                }
            }
            Route::Resource(rr) => {
                let method = req.method().clone();
                let content_type = header_str(&req, header::CONTENT_TYPE).to_string();
                let user_agent = header_str(&req, header::USER_AGENT).to_string();
                let body = match read_body(req).await {
                    Ok(b) => b,
                    Err(e) => return error_response(&e),
                };
                let parts = RequestParts {
                    method: &method,
                    query: &query,
                    content_type: &content_type,
                    accept: &accept,
                    user_agent: &user_agent,
                    user: &user.name,
                    body: &body,
                };
                match handlers::handle(
                    &self.registry,
                    &self.kubelet,
                    &rr,
                    parts,
                    self.bookmark_interval,
                )
                .await
                {
                    Ok(reply) => reply_response(reply),
                    Err(e) => error_response(&e),
                }
            }
        }
    }
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> &str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, StatusError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(Bytes::new());
    }
    match Limited::new(req.into_body(), codec::MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(StatusError::request_entity_too_large(codec::MAX_BODY_BYTES))
        }
        Err(e) => Err(StatusError::bad_request(format!(
            "reading request body: {e}"
        ))),
    }
}

fn reply_response(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Object {
            code,
            body,
            format,
            warnings,
        } => {
            let (bytes, ct) = codec::encode(format, &body);
            let mut resp = respond(code, bytes, ct);
            for w in warnings {
                let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
                if let Ok(v) = HeaderValue::from_str(&text) {
                    resp.headers_mut().append(header::WARNING, v);
                }
            }
            resp
        }
        Reply::Raw { code, body } => respond(code, body, "application/json"),
        Reply::Proxied(p) => {
            let stream = tokio_stream::wrappers::ReceiverStream::new(p.body)
                .map(|b| Ok::<_, Infallible>(Frame::data(b)));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            *resp.status_mut() = p.status;
            if let Ok(v) = HeaderValue::from_str(&p.content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp
        }
        Reply::Stream(rx) => {
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|b| Ok::<_, Infallible>(Frame::data(b)));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
            resp
        }
    }
}

/// The TLS configuration: our serving certificate; client certificates optional but, when
/// presented, verified against the cluster CA.
pub fn tls_acceptor(pki: &crate::pki::Pki) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accept connections until the task is dropped.
/// Accepts and serves connections until the task is aborted; the connections live in this
/// task's set, so stopping the server closes them too (a stopped server serves nobody).
pub async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, front: Arc<Front>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next() => continue,
        };
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let front = front.clone();
        connections.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| auth::user_from_certificate(c.as_ref()));
            let service = hyper::service::service_fn(move |req| {
                let front = front.clone();
                let cert_user = cert_user.clone();
                async move { Ok::<_, Infallible>(front.serve(req, cert_user).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

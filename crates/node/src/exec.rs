//! `kubectl exec` on the node: the kubelet endpoint's `/exec/NS/POD/CONTAINER`, over a WebSocket
//! speaking Kubernetes' remote command protocol (see [`crate::server`]).
//!
//! The command runs in the pod's sandbox (network, UTS and mount namespaces of its infra
//! process), with PATH, HOSTNAME (and TERM with a terminal) in its environment. Without `tty`,
//! stdout and stderr are separate streams; with it, one pseudo-terminal is the command's
//! controlling terminal (`setsid --ctty`), and its output goes to stdout. When the command ends,
//! the Status stream says how: `Success`, or `NonZeroExitCode` with the code, which kubectl exits
//! with. Closing the WebSocket kills the command.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::sandbox::Sandbox;
use crate::server::SandboxLookup;

type Body = BoxBody<Bytes, Infallible>;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// v5: the client closed a stream (`[255, stream]`).
const CLOSE: u8 = 255;

/// The protocols offered, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ExecRequest {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn parse_request(query: &str) -> Result<ExecRequest, String> {
    let mut r = ExecRequest::default();
    for (k, v) in crate::server::parse_query(query) {
        let on = v == "true" || v == "1";
        match k.as_str() {
            "command" => r.command.push(v),
            "input" | "stdin" => r.stdin = on,
            "output" | "stdout" => r.stdout = on,
            "error" | "stderr" => r.stderr = on,
            "tty" => r.tty = on,
            _ => {}
        }
    }
    if r.command.is_empty() {
        return Err("you must specify at least 1 command".into());
    }
    if !(r.stdin || r.stdout || r.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    if r.tty && r.stderr {
        // As kubelet: a terminal has one output stream.
        r.stderr = false;
    }
    Ok(r)
}

fn plain(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(msg.into())).boxed());
    *resp.status_mut() = code;
    resp
}

/// Answer an exec request: the switch to WebSocket, then the command in a task.
pub(crate) fn serve(
    rest: &str,
    sandboxes: &SandboxLookup,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [ns, pod, _container] = parts.as_slice() else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let exec = match parse_request(req.uri().query().unwrap_or("")) {
        Ok(e) => e,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    let Some(sandbox) = sandboxes(ns, pod) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node"),
        );
    };
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if !header(header::UPGRADE).eq_ignore_ascii_case("websocket") {
        return plain(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade\n");
    }
    let key = header(header::SEC_WEBSOCKET_KEY);
    let offered = header(header::SEC_WEBSOCKET_PROTOCOL);
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.contains(p)) else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("none of the offered protocols {offered:?} is supported (want one of {PROTOCOLS:?})"),
        );
    };
    let v5 = *protocol == PROTOCOLS[0];
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(ws, sandbox, exec, v5).await;
    });
    let mut resp = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(
        &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    ) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(protocol),
    );
    resp
}

fn frame(stream: u8, data: &[u8]) -> Message {
    let mut buf = Vec::with_capacity(data.len() + 1);
    buf.push(stream);
    buf.extend_from_slice(data);
    Message::Binary(buf.into())
}

/// The Status kubectl reads from the error stream at the end.
fn exit_status(command: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        return serde_json::json!({"metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn failure(message: String) -> serde_json::Value {
    serde_json::json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}

async fn run<S>(ws: WebSocketStream<S>, sandbox: Sandbox, exec: ExecRequest, v5: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A normal closure is the end of every stream for the client (1005, no status, is an
        // error to client-go).
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });

    let started = start(&sandbox, &exec);
    let (mut child, stdin, outputs) = match started {
        Ok(s) => s,
        Err(e) => {
            let status = failure(format!(
                "cannot run {:?} in pod {}/{}: {e}",
                exec.command, sandbox.namespace, sandbox.name
            ));
            let _ = out_tx
                .send(frame(ERROR, status.to_string().as_bytes()))
                .await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };

    // Output streams to the client.
    let mut pumps = Vec::new();
    for (stream, reader) in outputs {
        let tx = out_tx.clone();
        pumps.push(tokio::spawn(pump(stream, reader, tx)));
    }

    // Client messages to stdin; a closed socket ends the command.
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(Ok(msg)) = incoming.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => return false,
                _ => continue,
            };
            match data.first().copied() {
                Some(STDIN) => {
                    let failed = match stdin.as_mut() {
                        Some(w) => w.write_all(&data[1..]).await.is_err(),
                        None => false,
                    };
                    if failed {
                        stdin = None;
                    }
                }
                Some(CLOSE) if v5 && data.get(1) == Some(&STDIN) => stdin = None,
                // Stream 4, terminal resizes, is not applied (the terminal keeps its size).
                _ => {}
            }
        }
        false
    });

    let code = tokio::select! {
        status = child.wait() => status.map(exit_code).unwrap_or(1),
        _ = input => {
            // The client went away: stop the command.
            let _ = child.start_kill();
            let _ = child.wait().await;
            for p in pumps {
                p.abort();
            }
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    let _ = out_tx
        .send(frame(
            ERROR,
            exit_status(&exec.command, code).to_string().as_bytes(),
        ))
        .await;
    drop(out_tx);
    let _ = writer.await;
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
/// A started command: the process, its stdin (if asked for) and its output streams.
type Started = (tokio::process::Child, Option<Writer>, Vec<(u8, Reader)>);

/// Start the command; its stdin (if asked for) and output streams.
fn start(sandbox: &Sandbox, exec: &ExecRequest) -> std::io::Result<Started> {
    let mut env = Vec::new();
    let mut argv = exec.command.clone();
    if exec.tty {
        env.push(("TERM".to_string(), "xterm".to_string()));
        let mut wrapped = vec!["setsid".to_string(), "--wait".into(), "--ctty".into()];
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    let mut cmd =
        crate::runtime::enter_command(sandbox.infra_pid, &sandbox.hostname, &argv, &env, None)?;
    cmd.kill_on_drop(true);
    if exec.tty {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let slave: OwnedFd = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn()?;
        let master = std::fs::File::from(pty.master);
        let reader: Reader = Box::new(tokio::fs::File::from_std(master.try_clone()?));
        let writer: Option<Writer> = exec
            .stdin
            .then(|| Box::new(tokio::fs::File::from_std(master)) as Writer);
        return Ok((child, writer, vec![(STDOUT, reader)]));
    }
    cmd.stdin(if exec.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if exec.stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(if exec.stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take().map(|w| Box::new(w) as Writer);
    let mut outputs: Vec<(u8, Reader)> = Vec::new();
    if let Some(o) = child.stdout.take() {
        outputs.push((STDOUT, Box::new(o)));
    }
    if let Some(e) = child.stderr.take() {
        outputs.push((STDERR, Box::new(e)));
    }
    Ok((child, stdin, outputs))
}

async fn pump(stream: u8, mut reader: Reader, tx: tokio::sync::mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            // A terminal reports EIO once the command and its children are gone.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(stream, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_like_kubelet() {
        let r = parse_request(
            "command=sh&command=-c&command=echo%20hi&stdout=true&stderr=true&tty=false",
        )
        .expect("request");
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert!(r.stdout && r.stderr && !r.stdin && !r.tty);
        let t =
            parse_request("command=sh&stdin=true&stdout=true&stderr=true&tty=true").expect("tty");
        assert!(t.tty && !t.stderr, "a terminal has one output stream");
        assert!(parse_request("stdout=true").is_err());
        assert!(parse_request("command=ls").is_err());
    }

    #[test]
    fn statuses_carry_the_exit_code() {
        assert_eq!(exit_status(&["true".into()], 0)["status"], "Success");
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}

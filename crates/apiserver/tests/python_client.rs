//! The official Python `kubernetes` client against Switchyard: `tests/python/client_smoke.py`
//! runs against an in-process server through the server's own kubeconfig (client certificate)
//! and checks create, list, watch, patch, scale, delete and the errors it raises (422, 404, 409).
//! The package is installed by `scripts/test`; when it is missing (plain `cargo test`) the test
//! says so loudly and skips.

use std::process::Stdio;
use std::time::Duration;

use switchyard_testkit::InProcessServer;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_smoke.py");

/// Whether `python3` can import the `kubernetes` package.
fn python_client_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "!!!!!! SKIPPING: python3 cannot import kubernetes; run scripts/test (or `pip install kubernetes`) to run this test !!!!!!"
        );
    }
    ok
}

#[tokio::test]
async fn the_python_kubernetes_client_creates_lists_watches_patches_and_deletes() {
    if !python_client_available() {
        return;
    }
    let srv = InProcessServer::start().await.expect("server starts");
    let child = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .arg(srv.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the script finishes within 2 minutes")
        .expect("script output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client_smoke.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for expected in [
        "ok: watch from resourceVersion: [('ADDED', 'watched'), ('MODIFIED', 'watched'), ('DELETED', 'watched')]",
        "ok: 422 names metadata.name",
        "ok: read_namespaced_service raises ApiException 404",
        "PYTHON CLIENT SMOKE: PASS",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}\n--- stderr\n{stderr}");
    }
}

//! STUB (agent helper): contract-only placeholder, replaced by helper/node-runtime's runtime.rs on merge.
#![allow(dead_code, unused_variables, missing_docs)]
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub log_path: std::path::PathBuf,
}
pub struct Container;
impl Container {
    pub fn pid(&self) -> u32 {
        0
    }
    pub fn started_at(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
    pub async fn wait(&mut self) -> ExitInfo {
        std::future::pending().await
    }
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        Ok(())
    }
}
#[derive(Clone, Debug)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: jiff::Timestamp,
}
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

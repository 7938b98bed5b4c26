//! STUB (agent helper): contract-only placeholder, replaced by helper/node-runtime's sandbox.rs on merge.
#![allow(dead_code, unused_variables, missing_docs)]
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("not implemented")]
    NotImplemented,
}
pub struct PodNetwork;
impl PodNetwork {
    pub async fn setup(
        node_ns: switchyard_netns::NetNs,
        pod_cidr: ipnet::IpNet,
        state_dir: &Path,
    ) -> Result<PodNetwork, SandboxError> {
        Err(SandboxError::NotImplemented)
    }
    pub fn pod_cidr(&self) -> ipnet::IpNet {
        unimplemented!()
    }
    pub fn gateway(&self) -> IpAddr {
        unimplemented!()
    }
    pub async fn sync_routes(&self, routes: &[(ipnet::IpNet, IpAddr)]) -> Result<(), SandboxError> {
        Err(SandboxError::NotImplemented)
    }
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        Err(SandboxError::NotImplemented)
    }
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        Vec::new()
    }
    pub async fn destroy_sandbox(&self, pod_uid: &str) -> Result<(), SandboxError> {
        Err(SandboxError::NotImplemented)
    }
}
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub resolv_conf: String,
    pub hosts: String,
}
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub netns: switchyard_netns::NetNs,
    pub ip: IpAddr,
    pub hostname: String,
}
impl Sandbox {
    pub async fn start_container(
        &self,
        spec: &crate::runtime::ContainerSpec,
    ) -> Result<crate::runtime::Container, SandboxError> {
        Err(SandboxError::NotImplemented)
    }
    pub async fn exec(
        &self,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<crate::runtime::ExecOutput, SandboxError> {
        Err(SandboxError::NotImplemented)
    }
}

//! Switchyard's service proxy (the kube-proxy role, issue 5). Being built.
pub mod userspace;

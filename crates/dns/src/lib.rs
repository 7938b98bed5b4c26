//! Switchyard's cluster DNS (issue 6): an in-memory zone built from Services, EndpointSlices and
//! Pods that answers the Kubernetes DNS-Based Service Discovery specification 1.1.0 ([`zone`]),
//! a forwarder with a cache for every other name ([`forward`]), the UDP/TCP server ([`server`])
//! with the encoded replies it keeps for repeated queries (`reply_cache`), fed by watches
//! ([`sources`]), its CoreDNS-named metrics with `/healthz` and `/ready`
//! ([`metrics`]), and each instance's registration as an endpoint of `kube-system/kube-dns`
//! ([`registration`]). `switchyard dns` wires them together.

pub mod forward;
pub mod metrics;
pub mod registration;
mod reply_cache;
pub mod server;
pub mod sources;
mod udp_batch;
pub mod zone;

//! Switchyard's cluster DNS (issue 6): an in-memory zone built from Services, EndpointSlices and
//! Pods that answers the Kubernetes DNS-Based Service Discovery specification 1.1.0 ([`zone`]),
//! and a forwarder with a cache for every other name ([`forward`]). Being built: the pure zone
//! and the forwarder came first; the server ([`server`]) and the watches feeding it ([`sources`])
//! follow; `switchyard dns` is still to come.

pub mod forward;
pub mod metrics;
pub mod registration;
pub mod server;
pub mod sources;
pub mod zone;

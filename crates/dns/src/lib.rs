//! Switchyard's cluster DNS (issue 6): an in-memory zone built from Services, EndpointSlices and
//! Pods that answers the Kubernetes DNS-Based Service Discovery specification 1.1.0 ([`zone`]),
//! and a forwarder with a cache for every other name ([`forward`]). Being built: the pure zone
//! and the forwarder come first; the server, the watches and `switchyard dns` follow.

pub mod forward;
pub mod zone;

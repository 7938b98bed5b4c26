//! Switchyard's controllers, one module each. Every reconcile step is a pure function from the
//! observed objects (and an explicit `now`) to the writes that should happen, so it is tested on
//! its own; the loops that feed them from watches and apply their writes are thin.
//!
//! Being built (issue 3): the pure cores come first; the loops that run them inside
//! `switchyard server` follow.

pub mod controller_ref;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod lbipam;
pub mod leaderelection;
pub mod replicaset;

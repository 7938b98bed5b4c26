//! Switchyard's object model, the `kube-core` of the project: everything about Kubernetes objects
//! that needs no IO. The wire types are `k8s-openapi`'s (re-exported as [`k8s`]); this crate adds
//! what the API server and the controllers compute from them: the table of served resources,
//! defaulting and validation, label and field selectors, the patch formats, protobuf request
//! bodies, `kubectl get` tables, discovery and OpenAPI documents, and the pure logic of the
//! ClusterIP and NodePort allocators.
//!
//! Nothing here may open a socket, a file or a clock: callers pass `now` in.

pub use k8s_openapi as k8s;

pub mod allocator;
pub mod defaults;
pub mod discovery;
pub mod metallb;
pub mod node;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selector;
pub mod service;
pub mod status;
pub mod table;
pub mod validation;

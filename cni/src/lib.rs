//! podnet-cni: a CNI 1.1 plugin giving each pod a veth pair attached to the node's
//! bridge, with addresses from a built-in, crash-safe IPAM.
//!
//! Everything the runtime passes is validated ([`config`]) before anything is touched;
//! ADD undoes a partial setup before it reports an error; DEL is best effort and
//! idempotent. Netlink sockets for the pod's namespace are made on a throwaway thread
//! (see podnet-netlink): this process never changes the namespace of a thread it keeps.
//!
//! This crate must never import kube, k8s-openapi or podnet-crds, and has no async code
//! of its own (podnet-netlink keeps its runtime inside): the plugin is exec'd per pod and
//! stays small and synchronous.

pub mod config;
pub mod error;
pub mod hostports;
pub mod ipam;
pub mod plugin;

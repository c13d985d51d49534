//! podnet-operator: gives every node one pod CIDR per IP family out of the PodNetwork
//! that selects it, and records the allocation in the node's NodeRoute status.
//!
//! [`allocator`], [`network`] and [`plan`] are pure; [`writer`] (with [`events`]),
//! [`controller`] and [`leader`] talk to the API server; `main.rs` only wires
//! configuration, the HTTP endpoint and signals.
//!
//! This crate must never import podnet-netlink, podnet-firewall or podnet-contract: the
//! operator never touches a node.

pub mod allocator;
pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod network;
pub mod node;
pub mod plan;
pub mod route;
pub mod writer;

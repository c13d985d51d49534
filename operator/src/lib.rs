//! podnet-operator: gives every node one pod CIDR per IP family out of the PodNetwork
//! that selects it, and records the allocation in the node's NodeRoute status.

pub mod allocator;

//! podnet-operator: allocates a pod CIDR per node into NodeRoute status.

fn main() {
    println!("podnet-operator {}", env!("CARGO_PKG_VERSION"));
}

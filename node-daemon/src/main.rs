//! podnet-daemon: programs routes, CNI config and masquerade on each node.

fn main() {
    println!("podnet-daemon {}", env!("CARGO_PKG_VERSION"));
}

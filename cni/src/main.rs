//! podnet-cni: the podnet CNI plugin: bridge, veth and built-in IPAM.

fn main() {
    println!("podnet-cni {}", env!("CARGO_PKG_VERSION"));
}

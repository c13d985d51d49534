#!/usr/bin/env bash
# Builds the self-contained (statically linked) podnet-cni that nodes install:
# glibc static, so it runs on any node OS. Not position-independent
# (relocation-model=static, like the Go reference plugins): a static-pie binary
# relocates about 5,000 pointers at every start, a fifth of the page faults of an ADD.
# Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --quiet --release -p podnet-cni --target "$target"
bin="target/$target/release/podnet-cni"
file "$bin" 2>/dev/null | grep -q "static" || { echo "build-cni: $bin is not statically linked" >&2; exit 1; }
echo "$bin"

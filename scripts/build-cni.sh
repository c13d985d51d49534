#!/usr/bin/env bash
# Builds the self-contained (statically linked) podnet-cni that nodes install:
# glibc's static-pie, so it runs on any node OS. Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p podnet-cni --target "$target"
bin="target/$target/release/podnet-cni"
file "$bin" 2>/dev/null | grep -q "static" || { echo "build-cni: $bin is not statically linked" >&2; exit 1; }
echo "$bin"

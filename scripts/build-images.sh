#!/usr/bin/env bash
# Builds podnet's container images offline with buildah, then runs each image's
# entrypoint with --version from the image's own filesystem:
#   localhost/podnet-operator:VERSION  (images/operator.Containerfile)
#   localhost/podnet-daemon:VERSION    (images/daemon.Containerfile, carries podnet-cni)
# and writes them as OCI archives to target/images/*.tar (`ctr -n k8s.io images import`,
# `podman load`, or push them to your registry with `buildah push`).
#
# The Rust binaries are compiled on this machine (no registry is reachable for a Rust
# builder image); the base is assembled from Debian 12's .deb packages (glibc, libgcc,
# and iptables for the daemon), the way distroless images are. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "scripts/build-images.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (buildah's storage is the system's)"

need=()
for p in buildah file; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || die "no workspace version in Cargo.toml"
out=target/images
rm -rf "$out/ctx"
mkdir -p "$out/ctx" "$out/debs"

echo "==> building the binaries (release)" >&2
cargo build --quiet --release -p podnet-operator -p podnet-daemon
cni=$(scripts/build-cni.sh)

# The base: Debian packages, unpacked. apt-get download fetches exactly the versions the
# machine's package lists name, so the base follows Debian's security updates.
base_pkgs=(libc6 libgcc-s1 gcc-12-base netbase)
daemon_pkgs=(iptables libip4tc2 libip6tc2 libxtables12 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libnftnl11
  nftables libnftables1 libedit2 libjansson4 libgmp10 libtinfo6 libbsd0 libmd0)
fetch() {
  (cd "$out/debs" && for p in "$@"; do
     ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -qq "$p" >/dev/null 2>&1 \
       || { apt-get update -qq && apt-get download -qq "$p"; } || die "apt-get download $p failed"
   done)
}
unpack() {
  local root=$1; shift
  for p in "$@"; do
    local deb
    deb=$(ls -t "$out/debs/${p}"_*.deb | head -1)
    dpkg-deb -x "$deb" "$root"
  done
}
fetch "${base_pkgs[@]}" "${daemon_pkgs[@]}"

# Operator context.
mkdir -p "$out/ctx/operator/base"
unpack "$out/ctx/operator/base" "${base_pkgs[@]}"
cp target/release/podnet-operator "$out/ctx/operator/"
# Daemon context: the base plus nft and both iptables variants (legacy and nft: the
# daemon uses the one that holds the node's rules), iptables pointing at the nft variant
# by default (what Debian's alternatives would point to).
mkdir -p "$out/ctx/daemon/base"
unpack "$out/ctx/daemon/base" "${base_pkgs[@]}" "${daemon_pkgs[@]}"
for fam in iptables ip6tables; do
  for t in "" -save -restore; do
    ln -sf xtables-nft-multi "$out/ctx/daemon/base/usr/sbin/$fam$t"
    ln -sf xtables-nft-multi "$out/ctx/daemon/base/usr/sbin/$fam-nft$t"
    ln -sf xtables-legacy-multi "$out/ctx/daemon/base/usr/sbin/$fam-legacy$t"
  done
done
mkdir -p "$out/ctx/daemon/base/run"
cp target/release/podnet-daemon "$cni" "$out/ctx/daemon/"
for root in "$out/ctx/operator/base" "$out/ctx/daemon/base"; do
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/locale"
done

status=0
# Runs a command inside the image's container. The chroot runtime itself fails now and
# then before the command starts ("Close_Fd sealing memfd copy: Device or resource busy"
# in one CI run): only that failure of the runtime is retried, twice; any other output
# is the command's and is judged by the caller.
in_image() {
  local ctr=$1 out rc try
  shift
  for try in 1 2 3; do
    out=$(buildah run --isolation chroot "$ctr" -- "$@" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ] || ! grep -q "sealing memfd copy" <<<"$out"; then
      break
    fi
    echo "    (the container runtime failed before the command, try $try: $out)" >&2
    sleep 1
  done
  printf '%s' "$out"
  return "$rc"
}

for c in operator daemon; do
  image="localhost/podnet-$c:$version"
  echo "==> buildah bud $image" >&2
  buildah rmi -f "$image" >/dev/null 2>&1 || true
  buildah bud --quiet --layers=false -f "images/$c.Containerfile" -t "$image" "$out/ctx/$c" >/dev/null
  buildah push --quiet "$image" "oci-archive:$out/podnet-$c.tar:$image" >/dev/null

  # The entrypoint, from the image's config, run from the image's filesystem.
  ctr=$(buildah from --quiet "$image")
  entry=$(buildah inspect --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$ctr")
  user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$ctr")
  # shellcheck disable=SC2086
  got=$(in_image "$ctr" $entry --version) || true
  if [ "$got" = "podnet-$c $version" ]; then
    echo "    $image: entrypoint '${entry% }' --version -> $got (user: ${user:-root})" >&2
  else
    echo "    $image: entrypoint --version printed: $got" >&2
    status=1
  fi
  if [ "$c" = daemon ]; then
    for tool in "/usr/local/bin/podnet-cni --version" "/usr/sbin/iptables-restore --version" "/usr/sbin/ip6tables-save --version" \
        "/usr/sbin/iptables-legacy-save --version" "/usr/sbin/ip6tables-nft-restore --version" "/usr/sbin/nft --version"; do
      # shellcheck disable=SC2086
      if v=$(in_image "$ctr" $tool); then
        echo "    $image: $tool -> $v" >&2
      else
        echo "    $image: $tool failed: $v" >&2; status=1
      fi
    done
  fi
  if [ "$c" = operator ] && [ "$user" != "65532:65532" ]; then
    echo "    $image runs as '$user', not 65532" >&2; status=1
  fi
  buildah rm "$ctr" >/dev/null
  echo "    $image: $(du -h "$out/podnet-$c.tar" | cut -f1) archive ($out/podnet-$c.tar)" >&2
done
rm -rf "$out/ctx"
[ "$status" = 0 ] || die "an image's entrypoint did not run"
echo "images built: localhost/podnet-operator:$version localhost/podnet-daemon:$version" >&2

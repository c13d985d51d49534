#!/usr/bin/env bash
# Builds the images the real-node lab runs besides podnet's own, offline with buildah:
#   localhost/podnet-lab/pause:1    the pod sandbox (images/lab/pause.c, static)
#   localhost/podnet-lab/busybox:1  Debian's busybox-static + an HTTP echo service
#   localhost/podnet-lab/coredns:1  CoreDNS (from scripts/build-tools.sh), the cluster DNS
# as OCI archives in target/images/lab-*.tar, and the images of Kubernetes' e2e suite the
# conformance runs use (agnhost, busybox, glibc-dns-testing, pause) under the names the e2e framework asks
# for with lab/e2e/repo-list.yaml as KUBE_TEST_REPO_LIST, in target/images/lab-e2e.tar
# (one docker archive, every name). Rebuilt only when their inputs change. Prints the
# directory of the archives. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "scripts/build-lab-images.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (buildah's storage is the system's)"
for tool in buildah podman gcc curl nc.openbsd dig getent; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
[ -x /bin/busybox ] || die "/bin/busybox missing (Debian busybox-static)"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "libc.a missing (Debian libc6-dev) for the static pause binary"

tools_bin="${PODNET_TOOLS_CACHE:-/var/cache/podnet-tools}/bin"
[ -x "$tools_bin/agnhost" ] && [ -x "$tools_bin/e2e.test" ] && [ -x "$tools_bin/coredns" ] \
  || die "agnhost, e2e.test or coredns missing in $tools_bin (run scripts/build-tools.sh)"

out=target/images
mkdir -p "$out"
# What each image is made of; an archive whose stamp matches is reused.
stamp_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

build() { # name containerfile context stamp
  local name=$1 file=$2 ctx=$3 stamp=$4
  local archive="$out/lab-$name.tar" image="localhost/podnet-lab/$name:1"
  if [ -f "$archive" ] && [ "$(cat "$archive.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  echo "==> buildah bud $image" >&2
  buildah rmi -f "$image" >/dev/null 2>&1 || true
  buildah bud --quiet --layers=false -f "$file" -t "$image" "$ctx" >/dev/null
  rm -f "$archive"
  buildah push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
  echo "$stamp" > "$archive.stamp"
}

ctx=$(mktemp -d "$out/.lab-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

# pause
mkdir -p "$ctx/pause"
gcc -static -O2 -s -o "$ctx/pause/pause" images/lab/pause.c
build pause images/lab/pause.Containerfile "$ctx/pause" "$(stamp_of images/lab/pause.c images/lab/pause.Containerfile)"

# busybox with the echo service
root="$ctx/busybox/rootfs"
mkdir -p "$root/bin" "$root/www/cgi-bin" "$root/tmp" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
cat > "$root/www/cgi-bin/ip" <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n%s\n' "$REMOTE_ADDR"
CGI
chmod 0755 "$root/www/cgi-bin/ip"
echo "lab" > "$root/www/index.html"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
build busybox images/lab/busybox.Containerfile "$ctx/busybox" \
  "$(stamp_of /bin/busybox images/lab/busybox.Containerfile scripts/build-lab-images.sh)"

# CoreDNS, the lab cluster's DNS (scripts/build-tools.sh builds it, static).
mkdir -p "$ctx/coredns"
cp "$tools_bin/coredns" "$ctx/coredns/coredns"
build coredns images/lab/coredns.Containerfile "$ctx/coredns" \
  "$(stamp_of "$tools_bin/coredns" images/lab/coredns.Containerfile)"

# The e2e images. Their names: what the framework of this e2e.test asks for.
names=$(KUBE_TEST_REPO_LIST=lab/e2e/repo-list.yaml "$tools_bin/e2e.test" --list-images 2>/dev/null) \
  || die "e2e.test --list-images failed"
pick() { grep -E "^podnet\.test/$1:" <<<"$names" | sort || die "e2e.test names no image podnet.test/$1"; }
mapfile -t agnhost_names < <(pick e2e-test-images/agnhost)
# The network-policy-api conformance suite's base workload names agnhost by its upstream
# name (scripts/build-tools.sh checks that its manifests name only this one).
agnhost_names+=("registry.k8s.io/e2e-test-images/agnhost:2.45")
mapfile -t busybox_names < <(pick e2e-test-images/busybox)
mapfile -t dns_names < <(pick e2e-test-images/glibc-dns-testing)
mapfile -t pause_names < <(pick pause)
all_names=("${agnhost_names[@]}" "${busybox_names[@]}" "${dns_names[@]}" "${pause_names[@]}")
e2e_stamp=$(stamp_of "$tools_bin/agnhost" "$tools_bin/coredns" "$tools_bin/agnhost-files/localhost.crt" /bin/busybox /usr/bin/curl /bin/nc.openbsd /bin/dash /usr/bin/dig /usr/bin/getent /bin/bash \
  images/lab/agnhost.Containerfile images/lab/e2e-busybox.Containerfile images/lab/e2e-dns.Containerfile \
  images/lab/pause.c lab/e2e/repo-list.yaml scripts/build-lab-images.sh)
e2e_stamp="$e2e_stamp ${all_names[*]}"

# e2e_rootfs DIR BIN...: the busybox rootfs (without its echo service) with dash as
# /bin/sh — Debian's busybox shell runs its own applets before PATH, so `sh -c "... | nc
# -u"` (how the framework probes UDP) would get busybox's nc, which has no UDP — and each
# BIN=DEST copied with the libraries ldd finds for it, at the paths the host has them.
e2e_rootfs() {
  local r=$1; shift
  mkdir -p "$r/usr/bin" "$r/tmp"
  cp -a "$root/bin" "$root/etc" "$r/"
  chmod 1777 "$r/tmp"
  rm -f "$r/bin/sh"
  cp /bin/dash "$r/bin/sh"
  local bins=(/bin/dash) spec lib
  for spec in "$@"; do
    cp "${spec%%=*}" "$r${spec#*=}"
    bins+=("${spec%%=*}")
  done
  for lib in $(ldd "${bins[@]}" | awk '/=> \//{print $3} /^[[:space:]]*\/lib/{print $1}' | sort -u); do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
  done
  [ -e "$r/lib64/ld-linux-x86-64.so.2" ] || die "the dynamic loader was not copied into $r"
}

# runs_in IMAGE CMD...: each command must run from the image's own filesystem.
runs_in() {
  local image=$1 c t; shift
  c=$(buildah from --quiet "$image")
  for t in "$@"; do
    # shellcheck disable=SC2086
    buildah run --isolation chroot "$c" -- $t >/dev/null 2>&1 || { buildah rm "$c" >/dev/null; die "$image: $t does not run"; }
  done
  buildah rm "$c" >/dev/null
}

archive="$out/lab-e2e.tar"
if ! [ -f "$archive" ] || [ "$(cat "$archive.stamp" 2>/dev/null)" != "$e2e_stamp" ]; then
  # agnhost: agnhost, and the tools the framework execs in it (curl, OpenBSD netcat, and
  # dig and getent: the DNS tests probe from agnhost as well as from glibc-dns-testing).
  # bash: the network-policy-api conformance suite starts its servers with /bin/bash -c.
  e2e_rootfs "$ctx/agnhost/rootfs" /usr/bin/curl=/usr/bin/curl /bin/nc.openbsd=/usr/bin/nc \
    /usr/bin/dig=/usr/bin/dig /usr/bin/getent=/usr/bin/getent /bin/bash=/bin/bash
  cp "$tools_bin/agnhost" "$ctx/agnhost/rootfs/agnhost"
  # As upstream's image: porter's TLS pair at / and CoreDNS as /coredns (the DNS test of a
  # pod's own resolv.conf runs it as a pod's name server).
  cp "$tools_bin/agnhost-files/localhost.crt" "$tools_bin/agnhost-files/localhost.key" "$ctx/agnhost/rootfs/"
  cp "$tools_bin/coredns" "$ctx/agnhost/rootfs/coredns"
  # glibc-dns-testing: dig and glibc's getent (the DNS tests' probes).
  e2e_rootfs "$ctx/e2e-dns/rootfs" /usr/bin/dig=/usr/bin/dig /usr/bin/getent=/usr/bin/getent
  for r in agnhost e2e-dns; do printf 'hosts: files dns\n' > "$ctx/$r/rootfs/etc/nsswitch.conf"; done
  b="$ctx/e2e-busybox/rootfs"
  mkdir -p "$b/tmp"
  cp -a "$root/bin" "$root/etc" "$b/"
  chmod 1777 "$b/tmp"
  echo "==> buildah bud ${all_names[*]}" >&2
  for n in "${all_names[@]}"; do buildah rmi -f "$n" >/dev/null 2>&1 || true; done
  buildah bud --quiet --layers=false -f images/lab/agnhost.Containerfile -t "${agnhost_names[0]}" "$ctx/agnhost" >/dev/null
  buildah bud --quiet --layers=false -f images/lab/e2e-busybox.Containerfile -t "${busybox_names[0]}" "$ctx/e2e-busybox" >/dev/null
  buildah bud --quiet --layers=false -f images/lab/e2e-dns.Containerfile -t "${dns_names[0]}" "$ctx/e2e-dns" >/dev/null
  buildah bud --quiet --layers=false -f images/lab/pause.Containerfile -t "${pause_names[0]}" "$ctx/pause" >/dev/null
  for n in "${agnhost_names[@]:1}"; do buildah tag "${agnhost_names[0]}" "$n"; done
  for n in "${busybox_names[@]:1}"; do buildah tag "${busybox_names[0]}" "$n"; done
  for n in "${dns_names[@]:1}"; do buildah tag "${dns_names[0]}" "$n"; done
  for n in "${pause_names[@]:1}"; do buildah tag "${pause_names[0]}" "$n"; done
  runs_in "${agnhost_names[0]}" "/usr/bin/curl --version" "/usr/bin/nc -h" "/agnhost --help" "/bin/sh -c true" \
    "/usr/bin/dig -v" "/usr/bin/getent hosts localhost" "/coredns -version" "test -s /localhost.key" "/bin/bash -c true"
  runs_in "${dns_names[0]}" "/usr/bin/dig -v" "/usr/bin/getent hosts localhost" "/bin/sh -c true"
  rm -f "$archive"
  podman save --quiet --multi-image-archive --format docker-archive -o "$archive" "${all_names[@]}"
  echo "$e2e_stamp" > "$archive.stamp"
fi
echo "$out"

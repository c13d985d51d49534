#!/usr/bin/env bash
# Builds the images the real-node lab runs besides podnet's own, offline with buildah:
#   localhost/podnet-lab/pause:1    the pod sandbox (images/lab/pause.c, static)
#   localhost/podnet-lab/busybox:1  Debian's busybox-static + an HTTP echo service
# as OCI archives in target/images/lab-*.tar, rebuilt only when their inputs change.
# Prints the directory of the archives. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "scripts/build-lab-images.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (buildah's storage is the system's)"
for tool in buildah gcc; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
[ -x /bin/busybox ] || die "/bin/busybox missing (Debian busybox-static)"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "libc.a missing (Debian libc6-dev) for the static pause binary"

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
echo "$out"

#!/usr/bin/env bash
# The product's image recipes, built offline from Debian packages (no registry needed):
#
#   images/build.sh web TAG [VERSION]   busybox httpd on port 80 answering with the replica's hostname
#                                       (and "version VERSION") on /, "ok" on /health: the demo image
#                                       (hyperservice/demo-web:1) and the tests' web images
#   images/build.sh haproxy TAG         Debian's haproxy binary and its libraries, laid out like the
#                                       official haproxy image (config /usr/local/etc/haproxy/haproxy.cfg,
#                                       user haproxy (99), same CMD): the balancer fallback
#                                       (hyperservice/haproxy:debian) and the tests' balancer image
#
# Needs a Docker engine and Debian's busybox-static (and haproxy for the balancer); as root on Debian
# it installs what is missing, otherwise it says what to install.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

usage() {
  echo "usage: images/build.sh web TAG [VERSION] | images/build.sh haproxy TAG" >&2
  exit 2
}

# need COMMAND PACKAGE [CHECK]: the command is on PATH (and passes CHECK), else install PACKAGE.
need() {
  local command="$1" package="$2" check="${3:-true}"
  if command -v "$command" >/dev/null && "$check" "$(command -v "$command")"; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "images: installing Debian's $package ..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
    return 0
  fi
  echo "images: needs a $command from Debian's $package package; install it (as root: apt-get install $package)" >&2
  exit 1
}

static() {  # the binary runs without shared libraries (the web image has none)
  local linkage
  linkage="$(ldd "$1" 2>&1 || true)"  # ldd fails on a static binary
  [[ $linkage == *"not a dynamic executable"* || $linkage == *"statically linked"* ]]
}

[ $# -ge 2 ] || usage
kind="$1" tag="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

case "$kind" in
web)
  version="${3:-1}"
  need busybox busybox-static static
  cp -r "$here/web" "$work/web"
  cp "$(command -v busybox)" "$work/web/busybox"
  # the legacy builder: Debian's docker.io may come without buildx (its deprecation notice is noise here)
  if ! DOCKER_BUILDKIT=0 docker build -q --build-arg VERSION="$version" -t "$tag" "$work/web" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
  fi
  ;;
haproxy)
  need busybox busybox-static static
  need haproxy haproxy
  haproxy="$(command -v haproxy)"
  root="$work/rootfs"
  mkdir -p "$root"/{usr/local/sbin,usr/local/etc/haproxy,etc,tmp,var/lib/haproxy,run,bin}
  cp "$haproxy" "$root/usr/local/sbin/haproxy"
  for lib in $(ldd "$haproxy" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp "$(command -v busybox)" "$root/bin/busybox"
  for tool in sh cat kill ls sleep; do ln -sf busybox "$root/bin/$tool"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nhaproxy:x:99:99::/var/lib/haproxy:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nhaproxy:x:99:\n' >"$root/etc/group"
  printf 'global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n' \
    >"$root/usr/local/etc/haproxy/haproxy.cfg"
  chown -R 99:99 "$root/usr/local/etc/haproxy" "$root/var/lib/haproxy" "$root/run"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'USER haproxy' \
    --change 'WORKDIR /var/lib/haproxy' \
    --change 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' \
    - "$tag" >/dev/null
  ;;
*)
  usage
  ;;
esac

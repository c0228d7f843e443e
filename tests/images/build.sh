#!/usr/bin/env bash
# Builds the offline test images from Debian packages (no registry is reachable here):
#   hyperservice-test/web:1, :2     busybox httpd answering with its hostname (and version)
#   hyperservice-test/haproxy:2.6   Debian's haproxy binary and its libraries, laid out like the
#                                   official image (config at /usr/local/etc/haproxy/haproxy.cfg)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# web
cp -r "$here/web" "$work/web"
cp "$(command -v busybox)" "$work/web/busybox"
for version in 1 2; do
  DOCKER_BUILDKIT=0 docker build -q --build-arg VERSION="$version" -t "hyperservice-test/web:$version" "$work/web" >/dev/null
done

# haproxy
root="$work/haproxy/rootfs"
mkdir -p "$root"/{usr/local/sbin,usr/local/etc/haproxy,etc,tmp,var/lib/haproxy,run,bin}
cp /usr/sbin/haproxy "$root/usr/local/sbin/haproxy"
for lib in $(ldd /usr/sbin/haproxy | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp "$(command -v busybox)" "$root/bin/busybox"
for tool in sh cat kill ls sleep; do ln -sf busybox "$root/bin/$tool"; done
printf 'root:x:0:0:root:/root:/bin/sh\nhaproxy:x:99:99::/var/lib/haproxy:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nhaproxy:x:99:\n' > "$root/etc/group"
printf 'global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n' \
  > "$root/usr/local/etc/haproxy/haproxy.cfg"
chown -R 99:99 "$root/usr/local/etc/haproxy" "$root/var/lib/haproxy" "$root/run"
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'USER haproxy' \
  --change 'WORKDIR /var/lib/haproxy' \
  --change 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' \
  - hyperservice-test/haproxy:2.6 >/dev/null
echo "built: $(docker images --format '{{.Repository}}:{{.Tag}}' 'hyperservice-test/*' | sort | tr '\n' ' ')"

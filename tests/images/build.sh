#!/usr/bin/env bash
# Builds the offline images the tests use, with the product's recipes (images/build.sh; no registry
# is reachable on the build machines):
#   hyperservice-test/web:1, :2     busybox httpd answering with its hostname (and version)
#   hyperservice-test/haproxy:2.6   Debian's haproxy, laid out like the official image
#   hyperservice/demo-web:1         the product's demo image (the console's create form names it)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="$root/images/build.sh"
demo="$(cd "$root" && python3 -c 'from backend.settings import DEMO_IMAGE; print(DEMO_IMAGE)')"
"$build" web hyperservice-test/web:1 1
"$build" web hyperservice-test/web:2 2
"$build" web "$demo" 1
"$build" haproxy hyperservice-test/haproxy:2.6
echo "built: $(docker images --format '{{.Repository}}:{{.Tag}}' 'hyperservice-test/*' | sort | tr '\n' ' ')$demo"

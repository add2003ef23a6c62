#!/bin/sh
# Set up a fresh Debian machine (as root) for director's demo, tests and
# benchmarks: the kernel that has ip_vs, qemu to boot it, the reference tools
# (ipvsadm, keepalived), and a virtualenv with the package and its test tools.
set -eu
cd "$(dirname "$0")/../.."

need=""
for pkg in qemu-system-x86 linux-image-amd64 busybox-static ipvsadm keepalived iproute2 kmod procps; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

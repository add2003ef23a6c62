#!/bin/sh
# Set up a fresh Debian machine (as root) for director's demo, tests and
# benchmarks: the kernel that has ip_vs, qemu to boot it, the reference tools
# (ipvsadm, keepalived), BIRD 2 (the BGP speaker directord runs, and the
# tests' upstream router), promtool (Debian's prometheus package) and groff/man
# for the metrics and docs tests, and a virtualenv with the package and its
# test tools.
set -eu
cd "$(dirname "$0")/../.."

need=""
for pkg in qemu-system-x86 linux-image-amd64 busybox-static ipvsadm keepalived bird2 iproute2 kmod util-linux procps \
    python3 python3-venv prometheus groff-base man-db zsh; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi

# Debian's own interpreter: built static and optimized, it starts and runs
# Python code markedly faster than a shared-library build (in the test VM,
# `python -I -S -c pass` took 148 ms against 361 ms for a pyenv 3.11 build,
# and formatting a 1,000-service listing 262 ms against 480 ms).
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# A "compat" editable install is a plain path entry in a .pth file; the
# default one imports a finder (pathlib, re, importlib.util...) at every
# interpreter start, which directorctl's start-up pays for.
.venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat \
    || .venv/bin/pip install -q -e '.[test]'

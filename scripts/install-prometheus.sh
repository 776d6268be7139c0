#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus + promtool) for the alert tests when promtool is missing.
# Called by the test fixture (tests/fixtures/tools.py); needs root and apt-get. The package's init script must
# not start a server on :9090, so without a policy-rc.d (Docker images ship one) a temporary one denies it.
set -euo pipefail
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: promtool missing; run as root on Debian/Ubuntu: apt-get install -y prometheus" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
promtool --version | head -1

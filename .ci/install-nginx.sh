#!/usr/bin/env bash
# Installs Debian's nginx for the load-balancer tests (tests/deploy/test_lb.py) when it is not there yet.
# Idempotent and quiet when nginx is already installed. The package's post-install script would start a
# system nginx on port 80; a temporary policy-rc.d forbids that (the tests start their own nginx).
set -euo pipefail

nginx_binary() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }

if [ -n "$(nginx_binary)" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-nginx: not root or no apt-get; nginx not installed, the load-balancer tests will skip" >&2
    exit 0
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

bash "$(dirname "$0")/apt-install.sh" nginx
echo "install-nginx: $("$(nginx_binary)" -v 2>&1)"

#!/usr/bin/env bash
# Installs Debian's redis-server for the shared job store's tests (tests/service/test_redis_jobs.py) when it is not
# there yet. Idempotent and quiet when redis-server is already installed. The package's post-install script would
# start a system Redis on port 6379; a temporary policy-rc.d forbids that (the tests start their own, on a free
# port in a temporary directory).
set -euo pipefail

redis_binary() { command -v redis-server 2>/dev/null || { [ -x /usr/bin/redis-server ] && echo /usr/bin/redis-server; } || true; }

if [ -n "$(redis_binary)" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-redis: not root or no apt-get; redis-server not installed, the Redis job store tests will skip" >&2
    exit 0
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

bash "$(dirname "$0")/apt-install.sh" redis-server
echo "install-redis: $("$(redis_binary)" --version)"

#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages quietly, retrying transient mirror failures (3 tries).
# Shared by the CI installers (install-nginx.sh, install-chromium.sh), which decide whether to call it.
set -euo pipefail
for attempt in 1 2 3; do
    if apt-get update -qq >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
        exit 0
    fi
    if [ "$attempt" = 3 ]; then
        echo "apt-install: apt-get install $* failed 3 times" >&2
        exit 1
    fi
    sleep 5
done

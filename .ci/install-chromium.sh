#!/usr/bin/env bash
# Installs Debian's Chromium for the demo page's end-to-end test (tests/service/test_demo_page.py) when absent.
# Idempotent; without root or apt-get it installs nothing and that test skips with its reason.
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: not root or no apt-get; Chromium not installed, the demo page test will skip" >&2
    exit 0
fi
bash "$(dirname "$0")/apt-install.sh" chromium
echo "install-chromium: $(chromium --version 2>&1)"

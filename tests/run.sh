#!/usr/bin/env bash
# The test command of the README, and what CI runs (.ci/run): on a fresh machine it installs what the suite needs
# (Debian's nginx and Chromium when root; without them those tests skip), a venv with the pinned dev extras,
# then runs ruff and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-nginx.sh
bash .ci/install-chromium.sh
python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev,eval]'
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q

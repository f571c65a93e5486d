#!/usr/bin/env bash
# The test command of the README, and what CI runs (.ci/run): on a fresh machine it installs what the suite needs
# (Debian's nginx and redis-server, Chromium, and podman + buildah + runc when root; without them those tests
# skip), a venv with the pinned dev extras (and the Redis client), then runs ruff and the whole test suite (the
# container tests last; STYA2K_SKIP_CONTAINERS=1 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-nginx.sh
bash .ci/install-redis.sh
bash .ci/install-chromium.sh
bash .ci/install-containers.sh
python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev,eval,onnx,openvino,redis,train]'
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q --durations=20

"""Container health check: exit 0 when the replica answers 200 on /health/ready, 1 otherwise.

Used by the Dockerfile's HEALTHCHECK (the image has no curl). Not ready covers both "still loading"
and "draining after SIGTERM".
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def ready_url() -> str:
    port = os.environ.get("STYA2K_PORT", "8000")
    return f"http://127.0.0.1:{port}/health/ready"


def main() -> int:
    url = ready_url()
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"{url}: HTTP {exc.code}\n")
    except OSError as exc:
        sys.stderr.write(f"{url}: {exc}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())

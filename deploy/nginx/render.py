"""Render deploy/nginx/nginx.conf.template into a ready nginx.conf, for hosts that run nginx without Docker.

The substitution matches what the official nginx image does with its templates (each ``${NAME}`` of a
given variable is replaced, nothing else is touched, so nginx's own ``$host`` etc. stay), plus one thing
envsubst cannot do: the ``server ${STYA2K_LB_BACKEND} ...;`` line is written once per backend, and
backends named as down get nginx's ``down`` flag (taken out of rotation on the next reload).

    python deploy/nginx/render.py --backend 10.0.0.5:8000 --backend 10.0.0.6:8000 \
        --port 8080 --state-dir /var/lib/stya2k-lb --output /etc/nginx/nginx.conf
    nginx -t -c /etc/nginx/nginx.conf && nginx -s reload
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

TEMPLATE_PATH = Path(__file__).resolve().parent / "nginx.conf.template"
BACKEND_VARIABLE = "STYA2K_LB_BACKEND"
# The service's default STYA2K_MAX_BODY_BYTES (tests/deploy checks the two stay equal).
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
_PLACEHOLDER = re.compile(r"\$\{(STYA2K_[A-Z0-9_]+)\}")
_BACKEND = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class RenderError(ValueError):
    """The template cannot be rendered with the given values."""


def render(
    template: str,
    variables: Mapping[str, str],
    backends: Sequence[str],
    down: Collection[str] = (),
) -> str:
    """The template with every ``${STYA2K_*}`` placeholder filled; raises RenderError naming what is missing."""
    if not backends:
        raise RenderError("at least one backend (host:port) is needed")
    for backend in backends:
        if not _BACKEND.match(backend):
            raise RenderError(f"backend {backend!r} is not host:port")
    unknown_down = set(down) - set(backends)
    if unknown_down:
        raise RenderError(f"--down names {sorted(unknown_down)}, which are not among the backends")
    lines: list[str] = []
    for line in template.splitlines(keepends=True):
        if "${" + BACKEND_VARIABLE + "}" in line:
            lines.extend(_backend_line(line, backend, backend in down) for backend in backends)
        else:
            lines.append(line)
    text = "".join(lines)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise RenderError(f"the template uses ${{{name}}} but no value was given for it")
        return variables[name]

    return _PLACEHOLDER.sub(fill, text)


def _backend_line(line: str, backend: str, is_down: bool) -> str:
    filled = line.replace("${" + BACKEND_VARIABLE + "}", backend)
    if is_down:
        filled = re.sub(r";(\s*)$", r" down;\1", filled, count=1)
    return filled


def render_file(
    *,
    backends: Sequence[str],
    port: int,
    state_dir: str | Path,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    down: Collection[str] = (),
    template_path: Path = TEMPLATE_PATH,
) -> str:
    variables = {
        "STYA2K_LB_PORT": str(port),
        "STYA2K_LB_STATE_DIR": str(state_dir),
        "STYA2K_MAX_BODY_BYTES": str(max_body_bytes),
    }
    return render(template_path.read_text(), variables, backends, down)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", required=True, help="replica host:port (repeat)")
    parser.add_argument("--down", action="append", default=[], help="backend to keep out of rotation")
    parser.add_argument("--port", type=int, default=8080, help="port nginx listens on (default 8080)")
    parser.add_argument("--state-dir", default="/var/lib/stya2k-lb", help="writable dir for temp files")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = render_file(
            backends=args.backend,
            port=args.port,
            state_dir=args.state_dir,
            max_body_bytes=args.max_body_bytes,
            down=args.down,
            template_path=args.template,
        )
    except RenderError as exc:
        parser.error(str(exc))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

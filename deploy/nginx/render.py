"""Render deploy/nginx/nginx.conf.template into a ready nginx.conf, for hosts that run nginx without Docker.

The substitution matches what the official nginx image does with its templates (each ``${NAME}`` of a
given variable is replaced, nothing else is touched, so nginx's own ``$host`` etc. stay), plus one thing
envsubst cannot do: the ``server ${STYA2K_LB_BACKEND} ...;`` line is written once per backend, and
backends named as down get nginx's ``down`` flag (taken out of rotation on the next reload).

A backend given as ``ID=HOST:PORT`` (ID = that replica's STYA2K_REPLICA_ID) also gets an upstream of its own and
a route in the job map: ``/v1/jobs/ID.<random>[/result]`` goes straight to it, and an id naming no replica here
gets a JSON 404 from nginx. Give every backend its id, or none (then nginx asks replica after replica for a job,
a 404 meaning "not here"). A backend marked down keeps its job route: it still holds its jobs while it drains.

With ``--shared-jobs`` (the replicas share a Redis job store, STYA2K_JOBS_STORE=redis://...) every replica
answers every job path, so the job routing goes: the template's ``stya2k:memory-jobs`` blocks are left out and
job paths are balanced like the rest (a 404 is then final). Backends are given without ids.

    python deploy/nginx/render.py --backend r1=10.0.0.5:8000 --backend r2=10.0.0.6:8000 \
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
# The service's STYA2K_REPLICA_ID (service/settings.py REPLICA_ID_PATTERN; tests/deploy checks they agree).
REPLICA_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_MAP_PARAMETERS = frozenset({"default", "hostnames", "include", "volatile"})
JOB_ROUTES_MARKER = "# stya2k:job-routes"
MEMORY_JOBS_BEGIN = "# stya2k:memory-jobs begin"
MEMORY_JOBS_END = "# stya2k:memory-jobs end"
REPLICA_UPSTREAMS_MARKER = "# stya2k:replica-upstreams"
# A replica's own upstream: one server, so no passive health (max_fails=0: nowhere else to send its jobs).
_REPLICA_UPSTREAM = """\
    upstream {name} {{
        server {address} max_fails=0;
        keepalive 8;
        keepalive_timeout 4s;
        keepalive_requests 1000;
    }}
"""


class RenderError(ValueError):
    """The template cannot be rendered with the given values."""


def render(
    template: str,
    variables: Mapping[str, str],
    backends: Sequence[str],
    down: Collection[str] = (),
    shared_jobs: bool = False,
) -> str:
    """The template with every ``${STYA2K_*}`` placeholder filled; raises RenderError naming what is missing.

    ``backends`` are ``HOST:PORT`` or ``ID=HOST:PORT`` (all with an id or none); ``down`` names addresses;
    ``shared_jobs``: the replicas share one job store, so no job routing is written."""
    replicas = parse_backends(backends)
    if shared_jobs:
        if any(replica is not None for replica, _ in replicas):
            raise RenderError("--shared-jobs: every replica answers every job, give backends as HOST:PORT (no ids)")
        template = _without_memory_jobs(template)
    addresses = [address for _, address in replicas]
    unknown_down = set(down) - set(addresses)
    if unknown_down:
        raise RenderError(f"--down names {sorted(unknown_down)}, which are not among the backends")
    routes = [(replica, address) for replica, address in replicas if replica is not None]  # all or none
    lines: list[str] = []
    for line in template.splitlines(keepends=True):
        if "${" + BACKEND_VARIABLE + "}" in line:
            lines.extend(_backend_line(line, address, address in down) for address in addresses)
        elif routes and JOB_ROUTES_MARKER in line:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(f'{indent}default "";  # an id naming no replica here: JSON 404\n')
            lines.extend(f"{indent}{_map_key(replica)} {upstream_name(replica)};\n" for replica, _ in routes)
        elif routes and REPLICA_UPSTREAMS_MARKER in line:
            for replica, address in routes:
                lines.append(_REPLICA_UPSTREAM.format(name=upstream_name(replica), address=address))
        else:
            lines.append(line)
    text = "".join(lines)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise RenderError(f"the template uses ${{{name}}} but no value was given for it")
        return variables[name]

    return _PLACEHOLDER.sub(fill, text)


def _without_memory_jobs(template: str) -> str:
    """``template`` less its ``stya2k:memory-jobs`` blocks (markers included)."""
    kept: list[str] = []
    skipping = False
    for line in template.splitlines(keepends=True):
        if MEMORY_JOBS_BEGIN in line:
            if skipping:
                raise RenderError(f"the template nests {MEMORY_JOBS_BEGIN!r} blocks")
            skipping = True
        elif MEMORY_JOBS_END in line:
            if not skipping:
                raise RenderError(f"the template has {MEMORY_JOBS_END!r} without its begin")
            skipping = False
        elif not skipping:
            kept.append(line)
    if skipping:
        raise RenderError(f"the template has {MEMORY_JOBS_BEGIN!r} without its end")
    return "".join(kept)


def parse_backends(backends: Sequence[str]) -> list[tuple[str | None, str]]:
    """``[(replica id or None, "host:port")]`` from ``HOST:PORT`` / ``ID=HOST:PORT`` arguments, checked."""
    if not backends:
        raise RenderError("at least one backend (host:port) is needed")
    replicas: list[tuple[str | None, str]] = []
    for backend in backends:
        replica, sep, address = backend.rpartition("=")
        if not _BACKEND.match(address):
            raise RenderError(f"backend {backend!r} is not host:port or replica-id=host:port")
        if sep and not REPLICA_ID.match(replica):
            raise RenderError(
                f"backend {backend!r}: replica id {replica!r} is not 1-32 of a-z, 0-9, '-' (the replica's "
                "STYA2K_REPLICA_ID)"
            )
        replicas.append((replica if sep else None, address))
    with_id = [replica for replica, _ in replicas if replica is not None]
    if with_id and len(with_id) != len(replicas):
        raise RenderError("give every backend its replica id (ID=HOST:PORT) or none: the jobs of one without are lost")
    duplicates = sorted({replica for replica in with_id if with_id.count(replica) > 1})
    if duplicates:
        raise RenderError(f"replica ids {duplicates} are given to more than one backend; each replica needs its own")
    return replicas


def upstream_name(replica: str) -> str:
    return f"stya2k_replica_{replica}"


def _map_key(replica: str) -> str:
    """A map source value; the names of map's own parameters need a leading backslash."""
    return "\\" + replica if replica in _MAP_PARAMETERS else replica


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
    shared_jobs: bool = False,
) -> str:
    variables = {
        "STYA2K_LB_PORT": str(port),
        "STYA2K_LB_STATE_DIR": str(state_dir),
        "STYA2K_MAX_BODY_BYTES": str(max_body_bytes),
    }
    return render(template_path.read_text(), variables, backends, down, shared_jobs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backend",
        action="append",
        required=True,
        help="replica [ID=]HOST:PORT, ID its STYA2K_REPLICA_ID: job paths are routed to it by id (repeat)",
    )
    parser.add_argument(
        "--down", action="append", default=[], help="backend HOST:PORT out of rotation (its jobs stay reachable)"
    )
    parser.add_argument(
        "--shared-jobs",
        action="store_true",
        help="the replicas share a Redis job store (STYA2K_JOBS_STORE): no job routing, backends without ids",
    )
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
            shared_jobs=args.shared_jobs,
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

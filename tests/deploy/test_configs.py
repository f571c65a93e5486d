"""Static checks of docker-compose.yml, the nginx template, the Kubernetes manifests and Prometheus config.

Parsed for real (YAML, nginx's own `nginx -t` when nginx is installed) and held against the service's
settings and metrics, so a change on one side that breaks the other fails here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.metrics import REJECTION_REASONS, ServiceMetrics
from service.server import build_server
from service.settings import Settings

yaml = pytest.importorskip("yaml", reason="pyyaml (the dev extra) parses the deployment YAML")

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yml"
K8S = REPO_ROOT / "deploy" / "k8s"
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "nginx.conf.template"
KNOWN_SETTINGS = {f"STYA2K_{f.name.upper()}" for f in dataclasses.fields(Settings)}
DEFAULTS = Settings()
# The variables only nginx reads (the replicas refuse unknown STYA2K_* names, nginx gets its own set).
LB_VARIABLES = {"STYA2K_LB_PORT", "STYA2K_LB_BACKEND", "STYA2K_LB_STATE_DIR", "STYA2K_MAX_BODY_BYTES"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def interpolate(value: Any) -> str:
    """Compose's `${NAME:-default}` with nothing set in the environment: the default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def seconds(duration: str) -> float:
    """Compose durations as used here: `45s`, `2m`, `1m30s`."""
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert total > 0, f"cannot read duration {duration!r}"
    return total


def exposed_metric_names() -> set[str]:
    """Every sample name the service's /metrics can expose."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in ServiceMetrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# ------------------------------------------------------------------------------------------ compose
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def _replica_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: compose["services"][name] for name in ("stya2k-gpu", "stya2k-cpu")}


def test_compose_has_replicas_for_gpu_and_cpu_behind_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"stya2k-gpu", "stya2k-cpu", "lb", "prometheus"}
    gpu, cpu = services["stya2k-gpu"], services["stya2k-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and cpu["build"]["args"]["VARIANT"] == "cpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "resources" not in cpu.get("deploy", {}), "a CPU replica must not ask for a GPU"
    for name, replica in _replica_services(compose).items():
        assert int(interpolate(replica["deploy"]["replicas"])) >= 2, f"{name}: N replicas, N >= 2"
        assert (REPO_ROOT / replica["build"]["context"] / "Dockerfile").is_file()
        assert "container_name" not in replica, f"{name}: a fixed container name prevents scaling"
        assert "ports" not in replica, f"{name}: replicas are reached through nginx only"
        assert "stya2k" in replica["networks"]["backend"]["aliases"], (
            f"{name}: nginx and Prometheus find the replicas by the alias `stya2k`"
        )
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "profiles" not in services["lb"], "the load balancer runs with either profile"


def test_compose_replica_settings_are_valid_and_drain_fits_the_stop_grace(compose: dict[str, Any]) -> None:
    for name, replica in _replica_services(compose).items():
        env = {key: interpolate(value) for key, value in replica["environment"].items()}
        # Read (and removed) by the entry point, which sizes the torch threads with it.
        assert env.pop("REPLICAS_PER_HOST") == interpolate(replica["deploy"]["replicas"])
        unknown = set(env) - KNOWN_SETTINGS
        assert not unknown, f"{name}: the service refuses unknown settings {unknown}"
        assert replica["deploy"]["mode"] == "replicated", f"{name}: podman-compose ignores replicas without it"
        assert seconds(replica["healthcheck"]["start_period"]) >= 240, "two CPU replicas took up to 183 s to be ready"
        settings = Settings.from_env(env)
        assert settings.host == "0.0.0.0"
        drain = settings.drain_grace_s + settings.drain_timeout_s
        assert seconds(replica["stop_grace_period"]) > drain, (
            f"{name}: stop_grace_period must exceed drain grace + timeout ({drain} s) or Docker kills mid-drain"
        )
        assert replica["stop_signal"] == "SIGTERM"
        assert replica["healthcheck"]["test"] == ["CMD", "python3", "/app/deploy/docker/healthcheck.py"]
        assert settings.max_body_bytes == DEFAULTS.max_body_bytes
        assert settings.replica_id is None, (
            f"{name}: one STYA2K_REPLICA_ID for scaled replicas would give them all one id; unset = the host name"
        )


def test_compose_nginx_gets_the_template_and_the_replicas_body_limit(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    env = {key: interpolate(value) for key, value in lb["environment"].items()}
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx", "the template must become /etc/nginx/nginx.conf"
    assert re.match(env["NGINX_ENVSUBST_FILTER"], "STYA2K_LB_PORT")
    assert not re.match(env["NGINX_ENVSUBST_FILTER"], "host"), "nginx's own $variables must stay untouched"
    assert {k for k in env if k.startswith("STYA2K_")} == LB_VARIABLES
    assert int(env["STYA2K_MAX_BODY_BYTES"]) == DEFAULTS.max_body_bytes
    assert env["STYA2K_LB_BACKEND"] == f"stya2k:{DEFAULTS.port}"
    (volume,) = lb["volumes"]
    source, target, _mode = volume.split(":")
    assert (REPO_ROOT / source).resolve() == TEMPLATE
    assert target == "/etc/nginx/templates/nginx.conf.template"
    published = lb["ports"][0].rsplit(":", 1)[1]
    assert published == env["STYA2K_LB_PORT"]
    assert set(lb["depends_on"]) == {"stya2k-gpu", "stya2k-cpu"}
    for dependency in lb["depends_on"].values():
        assert dependency == {"condition": "service_healthy", "required": False}


def test_compose_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).is_file(), f"{name}: mounts {source}, which does not exist"


# ------------------------------------------------------------------------------------------ nginx
def _lb_variables(port: int = 8080, state_dir: str = "/var/cache/nginx") -> dict[str, str]:
    return {
        "STYA2K_LB_PORT": str(port),
        "STYA2K_LB_STATE_DIR": state_dir,
        "STYA2K_MAX_BODY_BYTES": str(DEFAULTS.max_body_bytes),
    }


def test_template_uses_exactly_the_variables_compose_sets() -> None:
    used = set(re.findall(r"\$\{(STYA2K_[A-Z0-9_]+)\}", TEMPLATE.read_text()))
    assert used == LB_VARIABLES


def test_render_repeats_the_backend_line_and_marks_down(nginx_render: ModuleType) -> None:
    text = nginx_render.render(
        TEMPLATE.read_text(), _lb_variables(), ["10.0.0.5:8000", "10.0.0.6:8000"], down={"10.0.0.6:8000"}
    )
    servers = re.findall(r"^\s*server (\S+) ([^;]*);", text, re.MULTILINE)
    assert servers == [
        ("10.0.0.5:8000", "max_fails=1 fail_timeout=10s"),
        ("10.0.0.6:8000", "max_fails=1 fail_timeout=10s down"),
    ]
    assert "${" not in text
    assert "$host" in text and "$upstream_addr" in text, "nginx's own variables must be left alone"


def test_render_rejects_what_nginx_would_choke_on(nginx_render: ModuleType) -> None:
    template = TEMPLATE.read_text()
    with pytest.raises(nginx_render.RenderError, match="no value was given for it"):
        nginx_render.render(template, {"STYA2K_LB_PORT": "8080"}, ["127.0.0.1:1"])
    with pytest.raises(nginx_render.RenderError, match="not host:port"):
        nginx_render.render(template, _lb_variables(), ["127.0.0.1"])
    with pytest.raises(nginx_render.RenderError, match="at least one backend"):
        nginx_render.render(template, _lb_variables(), [])
    with pytest.raises(nginx_render.RenderError, match="not among the backends"):
        nginx_render.render(template, _lb_variables(), ["127.0.0.1:1"], down={"127.0.0.1:2"})


def _directive(text: str, name: str, context: str | None = None) -> list[str]:
    scope = text
    if context is not None:
        match = re.search(context + r"\s*\{(.*?)\n    \}", text, re.DOTALL)
        assert match, f"no {context} block"
        scope = match.group(1)
    return re.findall(rf"^\s*{name}\s+([^;]+);", scope, re.MULTILINE)


def _nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value.strip())
    assert match, f"cannot read nginx time {value!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


def _location(text: str, head: str) -> str:
    """The body of the ``location <head> {`` block (8-space indent, as in the template)."""
    match = re.search(re.escape(f"location {head} {{") + r"(.*?)\n        \}", text, re.DOTALL)
    assert match, f"no location {head}"
    return match.group(1)


def test_nginx_balancing_retry_and_limits_match_the_service(nginx_render: ModuleType) -> None:
    from service.api.gateway import TRANSFER_PATHS
    from service.jobs import JOBS_PATH

    text = nginx_render.render(TEMPLATE.read_text(), _lb_variables(), ["127.0.0.1:8000"])
    upstream = r"upstream stya2k"
    assert "least_conn;" in text
    # Everything but the transfers (POST /v1/jobs among it): a POST is retried only while no replica received
    # it, since a job submission sent twice is accepted twice (issue 28).
    default_retry = _directive(_location(text, "/"), "proxy_next_upstream")[0].split()
    assert {"error", "timeout", "http_502", "http_503"} <= set(default_retry)
    assert "non_idempotent" not in default_retry, "POST /v1/jobs must never reach a second replica"
    # The synchronous transfers are pure functions of the request: recomputing a retried POST is safe.
    (transfer_regex,) = re.findall(r"location ~ (\^/v1/\S+) \{", text.replace("location ~ ^/v1/jobs/", ""))
    transfers = re.compile(transfer_regex)
    assert all(transfers.match(path) for path in TRANSFER_PATHS), "every transfer endpoint retries"
    assert not transfers.match(JOBS_PATH) and not transfers.match(JOBS_PATH + "/r1.x"), "never a job path"
    retry = _directive(_location(text, "~ " + transfer_regex), "proxy_next_upstream")[0].split()
    assert {"error", "timeout", "http_502", "http_503", "non_idempotent"} <= set(retry)
    for policy in (default_retry, retry):
        assert "http_429" not in policy and "http_504" not in policy, "backpressure and deadlines reach the client"
    assert int(_directive(text, "proxy_next_upstream_tries")[0]) >= 2
    assert _directive(text, "proxy_request_buffering") == ["on"], "a retry needs the buffered body"
    assert int(_directive(text, "client_max_body_size")[0]) == DEFAULTS.max_body_bytes
    assert _nginx_seconds(_directive(text, "proxy_read_timeout")[0]) > DEFAULTS.deadline_ms / 1000, (
        "the service's own deadline (504 with its JSON) must fire before nginx gives up"
    )
    # Keep-alive: the replica must keep idle connections longer than nginx does, so nginx never reuses a
    # connection the replica is closing; and nginx keeps clients longer than a cloud LB's usual 60 s.
    (upstream_idle,) = _directive(text, "keepalive_timeout", upstream)
    replica_idle = build_server(Settings(weights="random")).config.timeout_keep_alive
    assert _nginx_seconds(upstream_idle) < replica_idle
    client_idle = [v for v in _directive(text, "keepalive_timeout") if v != upstream_idle]
    assert client_idle and _nginx_seconds(client_idle[0]) > 60
    assert _directive(text, "proxy_http_version") == ["1.1"]
    assert 'proxy_set_header Connection ""' in text, "upstream keep-alive needs the Connection header cleared"


def test_render_routes_job_paths_by_replica_id(nginx_render: ModuleType) -> None:
    backends = ["r1=10.0.0.5:8000", "default=10.0.0.6:8000"]
    text = nginx_render.render(TEMPLATE.read_text(), _lb_variables(), backends, down={"10.0.0.6:8000"})
    # POST and the sync endpoints: the shared least_conn upstream, as without ids (the down flag applies there).
    assert _directive(text, "server", "upstream stya2k") == [
        "10.0.0.5:8000 max_fails=1 fail_timeout=10s",
        "10.0.0.6:8000 max_fails=1 fail_timeout=10s down",
    ]
    # One upstream per replica, not marked down: a draining replica still holds its jobs.
    assert _directive(text, "server", "upstream stya2k_replica_r1") == ["10.0.0.5:8000 max_fails=0"]
    assert _directive(text, "server", "upstream stya2k_replica_default") == ["10.0.0.6:8000 max_fails=0"]
    routes = re.search(r"map \$stya2k_job_replica \$stya2k_job_upstream \{(.*?)\n    \}", text, re.DOTALL)
    assert routes is not None
    entries = [line.split("#")[0].strip() for line in routes.group(1).splitlines() if line.split("#")[0].strip()]
    # `default` is one of map's own words: as a replica id it is escaped.
    assert entries == ['default "";', "r1 stya2k_replica_r1;", "\\default stya2k_replica_default;"]
    assert "${" not in text and nginx_render.JOB_ROUTES_MARKER not in text


def test_render_without_ids_sends_job_paths_to_the_shared_upstream(nginx_render: ModuleType) -> None:
    """The template as compose's envsubst leaves it (no ids): job paths go to `stya2k`, asking on after a 404."""
    text = nginx_render.render(TEMPLATE.read_text(), _lb_variables(), ["10.0.0.5:8000", "10.0.0.6:8000"])
    assert "default stya2k;  # stya2k:job-routes" in text and "stya2k_replica_" not in text
    job_location = re.search(r"location ~ \^/v1/jobs/\[\^/\]\+ \{(.*?)\n        \}", text, re.DOTALL)
    assert job_location is not None
    body = job_location.group(1)
    assert "proxy_pass http://$stya2k_job_upstream;" in body
    retry = _directive(body, "proxy_next_upstream")[0].split()
    assert "http_404" in retry and "non_idempotent" not in retry, "GET and DELETE of a job only, 404 = not here"
    assert _directive(body, "proxy_next_upstream_tries") == ["0"], "as many tries as replicas"


def test_render_for_a_shared_job_store_leaves_the_job_routing_out(nginx_render: ModuleType) -> None:
    """--shared-jobs: every replica answers every job path, so the job maps, the per-job location and its named
    error locations go, and job paths fall to the shared upstream's `location /` like the rest."""
    template = TEMPLATE.read_text()
    memory = nginx_render.render(template, _lb_variables(), ["10.0.0.5:8000", "10.0.0.6:8000"])
    shared = nginx_render.render(template, _lb_variables(), ["10.0.0.5:8000", "10.0.0.6:8000"], shared_jobs=True)
    routing = ("$stya2k_job_upstream", "$stya2k_job_replica", "location ~ ^/v1/jobs/", "@job_unknown_replica",
               "@job_replica_unavailable", "http_404", nginx_render.MEMORY_JOBS_BEGIN, nginx_render.MEMORY_JOBS_END)
    for piece in routing:
        assert piece in memory and piece not in shared, piece
    assert len(shared.splitlines()) < len(memory.splitlines()) - 40
    with pytest.raises(nginx_render.RenderError, match="no ids"):
        nginx_render.render(template, _lb_variables(), ["r1=10.0.0.5:8000"], shared_jobs=True)
    unbalanced = template.replace(nginx_render.MEMORY_JOBS_END, "", 1)
    with pytest.raises(nginx_render.RenderError, match="nests"):
        nginx_render.render(unbalanced, _lb_variables(), ["10.0.0.5:8000"], shared_jobs=True)


def test_render_refuses_unusable_replica_ids(nginx_render: ModuleType) -> None:
    template = TEMPLATE.read_text()
    for backends, message in (
        (["r1=127.0.0.1:1", "127.0.0.1:2"], "every backend its replica id"),
        (["r1=127.0.0.1:1", "r1=127.0.0.1:2"], "more than one backend"),
        (["R1=127.0.0.1:1"], "is not 1-32 of a-z"),
        (["r.1=127.0.0.1:1"], "is not 1-32 of a-z"),
        (["=127.0.0.1:1"], "is not 1-32 of a-z"),
        (["r1=127.0.0.1"], "not host:port"),
    ):
        with pytest.raises(nginx_render.RenderError, match=message):
            nginx_render.render(template, _lb_variables(), backends)


def test_nginx_job_route_and_render_agree_with_the_service_id_format(nginx_render: ModuleType) -> None:
    """The map's regex on $uri, render.py's replica-id check and the service's are one format."""
    from service.jobs import JOB_ID_PATTERN, job_replica, new_job_id
    from service.settings import REPLICA_ID_PATTERN

    assert nginx_render.REPLICA_ID.pattern == REPLICA_ID_PATTERN.pattern
    (route,) = re.findall(r'"~(\^/v1/jobs/[^"]+)" \$1;', TEMPLATE.read_text())
    uri = re.compile(route)
    assert REPLICA_ID_PATTERN.pattern.strip("^$") in route and JOB_ID_PATTERN.pattern.endswith("([0-9a-f]{32})$")
    samples = [new_job_id("r1"), new_job_id("a" * 32), new_job_id("4f2a9c1b7d3e"), "r1." + "a" * 31, "R1." + "a" * 32,
               "a" * 33 + "." + "a" * 32, "-r." + "a" * 32, "r1.x", "nope", "r1." + "A" * 32]  # fmt: skip
    for job_id in samples:
        for suffix in ("", "/result"):
            match = uri.match(f"/v1/jobs/{job_id}{suffix}")
            assert (match.group(1) if match else None) == job_replica(job_id), job_id
    assert uri.match(f"/v1/jobs/{new_job_id('r1')}/other") is None


def _nginx_binary_or_skip() -> str:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed (.ci/install-nginx.sh installs Debian's nginx)")
    return nginx


@pytest.mark.parametrize(
    ("backends", "shared_jobs"),
    [
        (["127.0.0.1:18001", "127.0.0.1:18002"], False),
        (["r1=127.0.0.1:18001", "default=127.0.0.1:18002"], False),
        (["127.0.0.1:18001", "127.0.0.1:18002"], True),
    ],
    ids=["addresses", "replica-ids", "shared-jobs"],
)
def test_nginx_accepts_the_rendered_config(
    nginx_render: ModuleType, tmp_path: Path, backends: list[str], shared_jobs: bool
) -> None:
    nginx = _nginx_binary_or_skip()
    config = tmp_path / "nginx.conf"
    text = nginx_render.render_file(backends=backends, port=18080, state_dir=tmp_path, shared_jobs=shared_jobs)
    config.write_text(text)
    pid = f"pid {tmp_path / 'nginx.pid'};"
    result = subprocess.run(
        [nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(config), "-g", pid],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ Kubernetes
@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
            docs[doc["kind"]] = doc
    return docs


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_the_shared_jobs_overlay_points_every_replica_at_its_redis(manifests: dict[str, dict[str, Any]]) -> None:
    """deploy/k8s/shared-jobs: the base plus a Redis StatefulSet + Service and an env patch; the store URL names
    that Service and port, the settings parse, and Redis keeps jobs (append-only, never evicts)."""
    overlay = K8S / "shared-jobs"
    kustomization = load_yaml(overlay / "kustomization.yaml")
    assert "../" in kustomization["resources"]
    listed = {name for name in kustomization["resources"] if name != "../"}
    listed |= {patch["path"] for patch in kustomization["patches"]}
    assert listed == {p.name for p in overlay.glob("*.yaml")} - {"kustomization.yaml"}
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((overlay / "redis.yaml").read_text())}
    statefulset, service = docs["StatefulSet"], docs["Service"]
    patch = load_yaml(overlay / "jobs-store.yaml")
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", manifests["Deployment"]["metadata"]["name"])
    (patched,) = patch["spec"]["template"]["spec"]["containers"]
    assert patched["name"] == manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["name"]
    env = {item["name"]: item["value"] for item in patched["env"]}
    assert set(env) <= KNOWN_SETTINGS, f"unknown settings {set(env) - KNOWN_SETTINGS}"
    settings = Settings.from_env(env)
    url = urllib.parse.urlsplit(settings.jobs_store)
    assert (url.scheme, url.hostname) == ("redis", service["metadata"]["name"])
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    pod = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    (redis,) = pod["spec"]["containers"]
    assert ":" in redis["image"] and not redis["image"].endswith(":latest"), "a pinned Redis image"
    args = dict(zip(redis["args"][::2], redis["args"][1::2], strict=True))
    assert args["--appendonly"] == "yes" and args["--maxmemory-policy"] == "noeviction"
    assert {m["mountPath"] for m in redis["volumeMounts"]} == {args["--dir"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_deployment_probes_drain_and_security(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= KNOWN_SETTINGS, f"unknown settings {set(env) - KNOWN_SETTINGS}"
    settings = Settings.from_env(env)
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.drain_grace_s + settings.drain_timeout_s
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names["http"] == settings.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < settings.drain_grace_s, (
        "the pod must leave the Service endpoints before the grace period ends and it stops accepting"
    )
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == settings.port


def test_service_selects_the_deployment_pods(manifests: dict[str, dict[str, Any]]) -> None:
    service, deployment = manifests["Service"], manifests["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports


def test_hpa_scales_the_deployment_on_real_metrics(manifests: dict[str, dict[str, Any]]) -> None:
    hpa, deployment = manifests["HorizontalPodAutoscaler"], manifests["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics and set(pod_metrics) <= exposed_metric_names()
    pdb = manifests["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["selector"]["matchLabels"].items()


# ------------------------------------------------------------------------------------------ Prometheus
def test_prometheus_scrapes_every_replica(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["stya2k"] and sd["type"] == "A" and sd["port"] == DEFAULTS.port
    volumes = compose["services"]["prometheus"]["volumes"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.startswith(".")}
    for rule_file in config["rule_files"]:
        assert rule_file in mounted, f"{rule_file} is not mounted into the Prometheus container"


def test_alert_rules_use_metrics_the_service_exposes() -> None:
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    exposed = exposed_metric_names() | {"up"}
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 5
    for rule in alerts:
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] in ("page", "warn")
        used = set(re.findall(r"\b(stya2k_[a-z_]+)", rule["expr"]))
        assert used <= exposed, f"{rule['alert']}: {used - exposed} is not a metric of the service"
        reasons = set(re.findall(r'reason="([a-z_]+)"', rule["expr"]))
        assert reasons <= set(REJECTION_REASONS)


SHELL_SCRIPTS = sorted(
    [*(REPO_ROOT / ".ci").glob("*.sh"), *(REPO_ROOT / "deploy").glob("*/*.sh"), REPO_ROOT / "tests" / "run.sh"]
)


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_ci_and_deploy_scripts_are_valid_shell(script: Path) -> None:
    shell = "sh" if script.read_text().startswith("#!/bin/sh") else "bash"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_nginx_keeps_the_same_request_ids_as_the_replicas() -> None:
    """The map that picks the client's X-Request-ID or nginx's own uses the gateway's rule (issue 28: nginx kept
    ids the replica replaced, and the two logs disagreed)."""
    from service.api.gateway import _REQUEST_ID

    match = re.search(r"map \$http_x_request_id \$stya2k_request_id \{(.*?)\n    \}", TEMPLATE.read_text(), re.DOTALL)
    assert match is not None
    lines = [line.strip() for line in match.group(1).splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    assert entries == [f'"~{_REQUEST_ID.pattern}" $http_x_request_id;', "default $request_id;"]

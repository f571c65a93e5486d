"""What the jobs endpoints need of a job store, and the choice between the two there are (STYA2K_JOBS_STORE).

- ``memory`` (the default, :class:`service.jobs.JobStore`): jobs live in this process; the replica that accepted
  a job is the one that answers it (ids ``<replica>.<hex>``, which the bundled nginx routes by). No dependency.
- ``redis://host:port/db`` (:class:`service.redis_jobs.RedisJobStore`): jobs live in Redis, shared by every
  replica: any replica runs, answers and cancels any job, and a job whose replica died is taken over by another.

Plain Python: :mod:`service.api.job_routes` turns these calls into HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from service.contract import TransferRequest, VideoRequest
from service.metrics import ServiceMetrics
from service.settings import Settings, SettingsError

if TYPE_CHECKING:
    from service.jobs import JobRunner
    from service.workload import ComputeRate


class JobResult(Protocol):
    """A finished job's encoded output, as GET /v1/jobs/{id}/result sends it."""

    @property
    def body(self) -> bytes: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def media_type(self) -> str: ...


class Jobs(Protocol):
    """A job store: accepts jobs, runs them on this replica's model thread, answers their state and result.

    Views are the JSON of docs/API.md "Jobs"; errors are :class:`service.errors.ServiceError` (the store's own
    outage included: 503 ``job_store_unavailable``)."""

    replica: str  # this replica's id (/v1/info replica_id)
    rate: ComputeRate  # model seconds per output pixel on this server (seeded by the start-up probe)

    def start(self, runner: JobRunner) -> None:
        """Start the worker (``runner``: this replica's engine, batcher and model thread) and the sweeper."""
        ...

    async def close(self, timeout_s: float) -> None:
        """Shutdown: refuse new jobs; give a running one ``timeout_s`` to finish."""
        ...

    async def submit(self, request: TransferRequest | VideoRequest, runner: JobRunner) -> dict[str, Any]:
        """Validate the request (bad input raises here, nothing is queued), queue it; the new job's view."""
        ...

    async def status(self, job_id: str) -> dict[str, Any]: ...

    async def fetch(self, job_id: str) -> JobResult:
        """The result of a done job (409 while it is not, 410 once the result is gone)."""
        ...

    async def delete(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """DELETE: the job's view after it, and whether it is still stopping (a running job)."""
        ...

    async def info(self) -> dict[str, Any]:
        """What /v1/info reports under ``jobs``."""
        ...


def create_job_store(settings: Settings, metrics: ServiceMetrics) -> Jobs:
    """The store STYA2K_JOBS_STORE names (the Redis one imports its client only when chosen)."""
    if settings.jobs_store == "memory":
        from service.jobs import JobStore

        return JobStore(settings, metrics)
    try:
        from service.redis_jobs import RedisJobStore
    except ModuleNotFoundError as exc:  # the optional dependency: say how to get it, not a bare traceback
        raise SettingsError(
            f"STYA2K_JOBS_STORE={settings.jobs_store!r} needs the Redis client: pip install 'stya2k-serve[redis]' "
            f"({exc})"
        ) from exc
    return RedisJobStore(settings, metrics)

"""Jobs on Redis (STYA2K_JOBS_STORE=redis://host:port/db): one queue and one set of results for every replica.

What lives where (every key starts with STYA2K_JOBS_KEY_PREFIX):

- ``job:<id>``: a hash with the job's state, progress, attempt, error and result description. It expires
  FORGET_AFTER_TTLS result lifetimes after the job ends (and at the latest its time limit after it was accepted).
- ``input:<id>``: the request's raw inputs (uploads and options, :func:`pack_request`), up to
  STYA2K_JOBS_STORE_MAX_INPUT_BYTES: a job must be recreatable by any replica, and its decoded tensors are not
  shareable, so the replica that takes it prepares it again. Deleted when the job ends.
- ``queue``: a Stream with one consumer group (``workers``); each replica process is one consumer. A replica
  takes one entry at a time when its model thread is free (XREADGROUP), heartbeats it while it runs (XCLAIM to
  itself, which resets the entry's idle time), and acknowledges it when the job ends. An entry idle for
  STYA2K_JOBS_STORE_CLAIM_IDLE_S belongs to a replica that died: another takes it over (XAUTOCLAIM). Each start
  counts an attempt in the job's hash; past STYA2K_JOBS_STORE_MAX_ATTEMPTS the job ends failed (``worker_lost``).
  Delivery is at-least-once: a replica that only stalled longer than the claim time may finish a job another
  one also ran; the first to end it wins (the end is a compare-and-set on the owner). Every process is a new
  consumer; the sweeper removes consumers idle for DEAD_CONSUMER_CLAIMS claim times that hold no entry.
- ``queued``: a sorted set of the waiting jobs by acceptance time: the queue depth, the oldest job's age (the
  autoscaler's signal) and admission (STYA2K_JOBS_QUEUE_SIZE counts the shared queue).
- ``result:<id>``: a done job's encoded output, with a TTL of STYA2K_JOB_RESULT_TTL_S; ``results`` (sorted by
  end time) and ``result_bytes`` keep all results within STYA2K_JOB_RESULT_BYTES, the oldest dropped first.

State changes that two replicas may race on (take, end, cancel, expire) are Lua scripts, so each is atomic.
Redis is not a blob store: inputs and results are bounded, and docs/DEPLOY.md says how to move blobs to object
storage. While Redis cannot be reached the job paths answer 503 ``job_store_unavailable``, the worker retries,
and nothing else of the service is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from service.contract import Mode, OutputFormat, StyleFit, TransferRequest, VideoRequest
from service.errors import (
    DeadlineExceeded,
    Draining,
    ImageTooLarge,
    Internal,
    JobExpired,
    JobNotDone,
    JobNotFound,
    JobQueueFull,
    JobTooLarge,
    JobTooLong,
    ServiceError,
    StoreUnavailable,
    WorkerLost,
    byte_size,
)
from service.jobs import FORGET_AFTER_TTLS, JOBS_PATH, JobRunner, JobState
from service.metrics import ServiceMetrics
from service.pipeline import TransferOutcome, complete_transfer, prepare_transfer
from service.settings import Settings
from service.video import PreparedVideo, VideoOutcome, complete_video, prepare_video
from service.workload import ESTIMATE_MARGIN, ComputeRate, MemoryBudget, transfer_bytes, video_bytes

log = logging.getLogger("service.jobs")

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # secrets.token_hex(16): 128 random bits
GROUP = "workers"
HEARTBEAT_S = 0.5  # progress written and the cancel flag read this often while a job runs
RETRY_S = 1.0  # the worker's pause after Redis could not be reached
BLOCK_MS = 1000  # longest wait of one XREADGROUP (the worker also checks for shutdown and dead replicas between)
# A consumer idle this many claim times is a replica that is gone: a live one reads every BLOCK_MS while idle and
# heartbeats (XCLAIM) every third of a claim time while it runs, and either touches its idle time.
DEAD_CONSUMER_CLAIMS = 3
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0  # > BLOCK_MS: a blocking read must not time out on the socket

# KEYS: job hash, queued set. ARGV: consumer, max attempts, now, message when the attempts are used up, forget s,
# id, error code.
TAKE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state ~= 'queued' and state ~= 'running' then return state end
redis.call('ZREM', KEYS[2], ARGV[6])
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
if attempt > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished', ARGV[3], 'error_code', ARGV[7],
             'error_message', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 'exhausted'
end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'started', ARGV[3], 'done', 0)
return 'run'
"""
# KEYS: job hash. ARGV: owner, forget s, then field/value pairs. Ends a running job only if this replica owns it.
END = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: job hash, result, results set, result_bytes. ARGV: owner, id, body, ttl s, forget s, limit, prefix,
# finished, why an older result is dropped, then field/value pairs of the job's end.
STORE_RESULT = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[2])
local total = redis.call('INCRBY', KEYS[4], string.len(ARGV[3]))
while total > tonumber(ARGV[6]) do
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not oldest or oldest == ARGV[2] then break end
  redis.call('ZREM', KEYS[3], oldest)
  local key = ARGV[7] .. 'job:' .. oldest
  total = redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', key, 'result_bytes') or '0'))
  redis.call('DEL', ARGV[7] .. 'result:' .. oldest)
  if redis.call('HGET', key, 'state') == 'done' then
    redis.call('HSET', key, 'state', 'expired', 'gone', ARGV[9])
  end
end
return 1
"""
# KEYS: job hash, result, results set, result_bytes. ARGV: id, why. A done job's result dropped (TTL, DELETE).
EXPIRE_RESULT = """
if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[1], 'result_bytes') or '0'))
end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'gone', ARGV[2])
end
return 1
"""
# KEYS: job hash, queued set. ARGV: id, now, forget s, new state, error code, error message. A queued job ended
# before it ran (DELETE, or its time passed); a running one is asked to stop (its replica reads the flag).
STOP = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'state', ARGV[4], 'finished', ARGV[2])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error_code', ARGV[5], 'error_message', ARGV[6]) end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 'stopped'
end
if state == 'running' and ARGV[4] == 'cancelled' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'stopping'
end
return state or 'gone'
"""
# KEYS: queue. ARGV: group, consumer. Removes a consumer only while it holds no entry: XGROUP DELCONSUMER drops
# a consumer's pending entries with it, and an entry out of every pending list is never delivered again.
FORGET_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) + 1
"""


# ---------------------------------------------------------------------------------------------- inputs
def pack_request(request: TransferRequest | VideoRequest) -> bytes:
    """The request as bytes: a JSON header (options; each upload as {"$b": index}) and the uploads after it."""
    blobs: list[bytes] = []

    def encode(value: Any) -> Any:
        if isinstance(value, bytes):
            blobs.append(value)
            return {"$b": len(blobs) - 1}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, Enum):
            return value.value
        return value

    fields = {f.name: encode(getattr(request, f.name)) for f in dataclasses.fields(request)}
    header = {"kind": "video" if isinstance(request, VideoRequest) else "image", "fields": fields,
              "sizes": [len(b) for b in blobs]}  # fmt: skip
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + b"".join(blobs)


ENUM_FIELDS: dict[str, type[Enum]] = {"mode": Mode, "format": OutputFormat, "style_fit": StyleFit}


def unpack_request(data: bytes) -> TransferRequest | VideoRequest:
    (length,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4 : 4 + length])
    blobs, offset = [], 4 + length
    for size in header["sizes"]:
        blobs.append(data[offset : offset + size])
        offset += size

    def decode(value: Any) -> Any:
        if isinstance(value, dict) and "$b" in value:
            return blobs[value["$b"]]
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    fields = {name: decode(value) for name, value in header["fields"].items()}
    for name, enum in ENUM_FIELDS.items():
        if fields.get(name) is not None:
            fields[name] = enum(fields[name])
    return VideoRequest(**fields) if header["kind"] == "video" else TransferRequest(**fields)


def input_bytes(request: TransferRequest | VideoRequest) -> int:
    """The uploads' bytes: what STYA2K_JOBS_STORE_MAX_INPUT_BYTES limits."""
    uploads = [request.video] if isinstance(request, VideoRequest) else [request.content, *(request.masks or ())]
    if isinstance(request, TransferRequest) and request.labels is not None:
        uploads.append(request.labels)
    return sum(len(b) for b in (*uploads, *request.styles))


# ---------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class StoredResult:
    """A done job's output as read back from Redis (service.job_store.JobResult)."""

    body: bytes
    width: int
    height: int
    media_type: str


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


def job_view(job: dict[str, str], now: float, ttl_s: float) -> dict[str, Any]:
    """GET /v1/jobs/{id} of a job in Redis: service.jobs.Job.view's fields, plus ``attempt``."""
    state = JobState(job["state"])
    accepted = float(job["accepted"])
    started = float(job["started"]) if job.get("started") else None
    finished = float(job["finished"]) if job.get("finished") else None
    end = finished if finished is not None else now
    path = f"{JOBS_PATH}/{job['id']}"
    body: dict[str, Any] = {
        "id": job["id"],
        "kind": job["kind"],
        "mode": job["mode"],
        "state": str(state),
        "progress": {"done": int(job.get("done", 0)), "total": int(job.get("total", 1)),
                     "unit": "frames" if job["kind"] == "video" else "steps"},
        "timings": {
            "queued_s": round((started if started is not None else end) - accepted, 3),
            "running_s": None if started is None else round(end - started, 3),
            "total_s": round(end - accepted, 3),
        },
        "accepted_at": _iso(accepted),
        "finished_at": None if finished is None else _iso(finished),
        "error": {"code": job["error_code"], "message": job["error_message"]} if job.get("error_code") else None,
        "links": {"self": path, "result": f"{path}/result"},
        "attempt": int(job.get("attempt", 0)),
    }  # fmt: skip
    if job.get("cancel") and not state.finished:
        body["cancel_requested"] = True
    if state is JobState.done and finished is not None:
        body["result"] = {
            "format": job["result_format"], "width": int(job["result_width"]), "height": int(job["result_height"]),
            "bytes": int(job["result_bytes"]), "expires_at": _iso(finished + ttl_s),
            **json.loads(job.get("result_details", "{}")),
        }  # fmt: skip
    if job.get("gone"):
        body["expired_reason"] = job["gone"]
    return body


# ---------------------------------------------------------------------------------------------- the store
class RedisJobStore:
    """service.job_store.Jobs on Redis: every replica submits to, runs from and answers the same jobs."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.replica = settings.replica
        # One consumer per process: a restarted replica is a new consumer, and its old entries are claimed.
        self.consumer = f"{self.replica}-{secrets.token_hex(4)}"
        self.prefix = settings.jobs_key_prefix
        self.redis = aioredis.from_url(
            settings.jobs_store, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # an outage is answered at once (503), not after a retry loop
            protocol=2,  # the reply shapes parsed below (RESP2)
        )  # fmt: skip
        kwargs = self.redis.connection_pool.connection_kwargs
        self.where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
        self._take = self.redis.register_script(TAKE)
        self._end_script = self.redis.register_script(END)
        self._store_result = self.redis.register_script(STORE_RESULT)
        self._expire_result = self.redis.register_script(EXPIRE_RESULT)
        self._stop = self.redis.register_script(STOP)
        self._forget_consumer = self.redis.register_script(FORGET_CONSUMER)
        self._consumers_checked = 0.0
        self.memory = MemoryBudget(settings.jobs_memory_bytes)  # submissions being validated, the running job
        self.rate = ComputeRate()
        self._runner: JobRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running: asyncio.Task[Any] | None = None
        self._closed = False
        self._preparing = 0
        self._last_outage_log = 0.0

    def key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}:{job_id}" if job_id else f"{self.prefix}{kind}"

    @property
    def forget_s(self) -> int:
        return max(1, round(FORGET_AFTER_TTLS * self.settings.job_result_ttl_s))

    @contextlib.contextmanager
    def _reachable(self, doing: str) -> Iterator[None]:
        """Redis errors become 503 job_store_unavailable with what failed and where."""
        try:
            yield
        except OutOfMemoryError as exc:  # reached, but over its maxmemory (noeviction): no room for the job
            raise StoreUnavailable(
                f"the shared job store (Redis at {self.where}, STYA2K_JOBS_STORE) is full while {doing} (OOM: over "
                "its maxmemory); retry later, or raise Redis's maxmemory / lower STYA2K_JOB_RESULT_BYTES",
                retry_after_s=5,
            ) from exc
        except RedisError as exc:
            raise StoreUnavailable(
                f"the shared job store (Redis at {self.where}, STYA2K_JOBS_STORE) cannot be reached while "
                f"{doing} ({type(exc).__name__}: {str(exc)[:120]}); retry shortly",
                retry_after_s=1,
            ) from exc

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self, runner: JobRunner) -> None:
        if self._tasks:
            return
        self._runner = dataclasses.replace(runner, rate=self.rate)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name="stya2k-jobs"),
            loop.create_task(self._sweep_forever(), name="stya2k-jobs-sweep"),
        ]

    async def close(self, timeout_s: float) -> None:
        """Queued jobs stay in the shared queue for the other replicas; a running one gets ``timeout_s``, then is
        left pending: another replica takes it over after STYA2K_JOBS_STORE_CLAIM_IDLE_S."""
        self._closed = True
        running = self._running
        if running is not None:
            await asyncio.wait({running}, timeout=timeout_s)
            if not running.done():
                log.warning("a job still runs after the drain timeout; leaving it to another replica")
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.redis.aclose()

    # ------------------------------------------------------------------------------------------- requests
    async def submit(self, request: TransferRequest | VideoRequest, runner: JobRunner) -> dict[str, Any]:
        """Checked and prepared here as the memory store does (bad input is refused now), then only the raw
        inputs are queued: the replica that takes the job prepares it again."""
        if self._closed:
            raise Draining("the server is shutting down; submit the job to another instance", retry_after_s=1)
        size, limit = input_bytes(request), self.settings.jobs_store_max_input_bytes
        if size > limit:
            raise JobTooLarge(
                f"the job's uploads are {byte_size(size)}; a job on the shared store may send at most "
                f"{byte_size(limit)} (STYA2K_JOBS_STORE_MAX_INPUT_BYTES: its inputs travel through Redis)"
            )
        with self._reachable("checking the queue"):
            waiting = await self.redis.zcard(self.key("queued"))
        if waiting + self._preparing >= self.settings.jobs_queue_size:
            raise JobQueueFull(
                f"the shared job queue is full ({waiting} jobs waiting, STYA2K_JOBS_QUEUE_SIZE="
                f"{self.settings.jobs_queue_size}); retry later",
                retry_after_s=5,
            )
        total, estimate_s = await self._check(request, runner)
        return await self._enqueue(request, total, estimate_s)

    async def _check(self, request: TransferRequest | VideoRequest, runner: JobRunner) -> tuple[int, float | None]:
        """Prepare the request once (validation and decoding, within the jobs' memory), then drop it; the
        frames (or 1) and the estimated model seconds."""
        settings = self.settings
        if isinstance(request, VideoRequest):
            estimated = video_bytes(request, settings.style_size)
        else:
            side = min(request.max_side or settings.default_side, settings.jobs_max_side)
            estimated = transfer_bytes(request, side, settings.style_size)
        reservation = self.memory.reserve(estimated, "this job", 5.0)
        self._preparing += 1
        try:
            prepared = await self._prepare(request, runner)
        finally:
            self._preparing -= 1
            self.memory.release(reservation)
        if isinstance(prepared, PreparedVideo):
            width, height = prepared.size
            total, pixels = prepared.info.frames, prepared.info.frames * width * height
        else:
            total, pixels = 1, prepared.job.width * prepared.job.height
        estimate_s = self.rate.estimate_s(pixels)
        limit = settings.job_timeout_s
        if estimate_s is not None and estimate_s > ESTIMATE_MARGIN * limit:
            raise JobTooLong(
                f"this job needs about {estimate_s:.0f} s of model time on this server, and a job must finish "
                f"within {limit:g} s (STYA2K_JOB_TIMEOUT_S); send a shorter clip or a smaller max_side"
            )
        return total, estimate_s

    async def _prepare(self, request: TransferRequest | VideoRequest, runner: JobRunner) -> Any:
        if isinstance(request, VideoRequest):
            return await prepare_video(request, self.settings, runner, self.metrics)
        return await prepare_transfer(request, self.settings, runner, self.metrics,
                                      max_side=self.settings.jobs_max_side)  # fmt: skip

    async def _enqueue(self, request: TransferRequest | VideoRequest, total: int, estimate_s: float | None) -> dict:
        job_id = secrets.token_hex(16)
        now = time.time()
        job = {
            "id": job_id, "kind": "video" if isinstance(request, VideoRequest) else "image",
            "mode": str(request.mode), "state": "queued", "accepted": repr(now), "done": "0", "total": str(total),
            "attempt": "0", "estimate_s": "" if estimate_s is None else f"{estimate_s:.3f}",
        }  # fmt: skip
        lifetime = round(self.settings.job_timeout_s) + self.forget_s  # a job never left behind for ever
        with self._reachable("queueing the job"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.key("job", job_id), mapping=job)
                pipe.expire(self.key("job", job_id), lifetime)
                pipe.set(self.key("input", job_id), pack_request(request), ex=lifetime)
                pipe.zadd(self.key("queued"), {job_id: now})
                pipe.xadd(self.key("queue"), {"id": job_id})
                await pipe.execute()
        log.info("job accepted", extra={"job": job_id, "mode": job["mode"]})
        return job_view(job, now, self.settings.job_result_ttl_s)

    async def _load(self, job_id: str, doing: str) -> dict[str, str]:
        if not JOB_ID_PATTERN.match(job_id):
            raise JobNotFound(
                f"no job {job_id[:80]!r}: ids on the shared job store are 32 hex digits (an id of the form "
                "<replica>.<hex> came from a server with the memory store, and only that server knew it)"
            )
        with self._reachable(doing):
            raw = await self.redis.hgetall(self.key("job", job_id))
        if not raw:
            raise JobNotFound(
                f"no job {job_id!r} in the shared job store: never accepted, or forgotten a while after it ended "
                f"(STYA2K_JOB_RESULT_TTL_S x {FORGET_AFTER_TTLS}), or lost with a Redis restart without persistence"
            )
        return _text(raw)

    async def status(self, job_id: str) -> dict[str, Any]:
        return job_view(await self._load(job_id, "reading the job"), time.time(), self.settings.job_result_ttl_s)

    async def fetch(self, job_id: str) -> StoredResult:
        job = await self._load(job_id, "reading the job")
        state, path = JobState(job["state"]), f"{JOBS_PATH}/{job_id}"
        if state is JobState.done:
            with self._reachable("reading the result"):
                body = await self.redis.get(self.key("result", job_id))
            if body is not None:
                return StoredResult(body, int(job["result_width"]), int(job["result_height"]),
                                    job["result_media_type"])  # fmt: skip
            raise JobExpired(f"the result of job {job_id} is gone: its time to live passed")
        if state is JobState.expired:
            raise JobExpired(f"the result of job {job_id} is gone: {job.get('gone')}")
        if state is JobState.failed:
            raise JobNotDone(f"job {job_id} failed ({job['error_code']}: {job['error_message']}); it has no result")
        if state is JobState.cancelled:
            raise JobNotDone(f"job {job_id} was cancelled; it has no result")
        raise JobNotDone(
            f"job {job_id} is {state} ({job.get('done', 0)} of {job.get('total', 1)} steps done); poll GET {path} "
            "until its state is done"
        )

    async def delete(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """A queued job ends cancelled; a running one is flagged and its replica stops it within a heartbeat; a
        done one's result is deleted."""
        job = await self._load(job_id, "reading the job")
        with self._reachable("cancelling the job"):
            if job["state"] == "done":
                await self._expire(job_id, "deleted by the client (DELETE)")
            else:
                await self._stop(keys=[self.key("job", job_id), self.key("queued")],
                                 args=[job_id, repr(time.time()), self.forget_s, "cancelled", "", ""])  # fmt: skip
        job = await self._load(job_id, "reading the job")
        return job_view(job, time.time(), self.settings.job_result_ttl_s), job["state"] == "running"

    async def _expire(self, job_id: str, why: str) -> None:
        keys = [self.key("job", job_id), self.key("result", job_id), self.key("results"), self.key("result_bytes")]
        await self._expire_result(keys=keys, args=[job_id, why])

    async def info(self) -> dict[str, Any]:
        base = {"store": "redis", "running": int(self._running is not None), "preparing": self._preparing,
                "memory_bytes": self.memory.used, "memory_capacity_bytes": self.memory.capacity,
                "compute_rate": self.rate.info()}  # fmt: skip
        try:
            queued, oldest = await self._queue_depth()
            result_bytes = int(await self.redis.get(self.key("result_bytes")) or 0)
        except RedisError as exc:
            return {**base, "reachable": False, "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        return {**base, "reachable": True, "queued": queued, "oldest_queued_age_s": round(oldest, 3),
                "result_bytes": result_bytes}  # fmt: skip

    async def _queue_depth(self) -> tuple[int, float]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.key("queued"))
            pipe.zrange(self.key("queued"), 0, 0, withscores=True)
            count, oldest = await pipe.execute()
        return int(count), (time.time() - oldest[0][1]) if oldest else 0.0

    # ------------------------------------------------------------------------------------------- worker
    async def _work(self) -> None:
        """Take one entry at a time: first one a dead replica left (XAUTOCLAIM), else a new one (XREADGROUP)."""
        while not self._closed:
            try:
                await self._ensure_group()
                entry = await self._next_entry()
                if entry is not None:
                    await self._take_entry(*entry)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self._outage(exc, "the worker")
                await asyncio.sleep(RETRY_S)
            except Exception:  # a bug: logged, the worker keeps serving
                log.exception("the job worker failed; continuing")
                await asyncio.sleep(RETRY_S)

    def _outage(self, exc: BaseException, who: str) -> None:
        now = time.monotonic()
        if now - self._last_outage_log > 10:  # once per 10 s, not once per retry
            self._last_outage_log = now
            log.warning("%s cannot reach Redis at %s: %s: %s", who, self.where, type(exc).__name__, exc)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.key("queue"), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _next_entry(self) -> tuple[str, str] | None:
        claim_ms = round(self.settings.jobs_store_claim_idle_s * 1000)
        _, claimed, *_ = await self.redis.xautoclaim(self.key("queue"), GROUP, self.consumer, claim_ms, "0-0",
                                                     count=1)  # fmt: skip
        if claimed:
            entry_id, fields = claimed[0]
            log.warning("taking over a job whose replica stopped answering", extra={"job": fields[b"id"].decode()})
            return entry_id.decode(), fields[b"id"].decode()
        read = await self.redis.xreadgroup(GROUP, self.consumer, {self.key("queue"): ">"}, count=1, block=BLOCK_MS)
        if not read:
            return None
        entry_id, fields = read[0][1][0]
        return entry_id.decode(), fields[b"id"].decode()

    async def _take_entry(self, entry_id: str, job_id: str) -> None:
        message = (f"the replicas running this job stopped {self.settings.jobs_store_max_attempts} times "
                   "(STYA2K_JOBS_STORE_MAX_ATTEMPTS); it is not tried again")  # fmt: skip
        taken = (await self._take(
            keys=[self.key("job", job_id), self.key("queued")],
            args=[self.consumer, self.settings.jobs_store_max_attempts, repr(time.time()), message, self.forget_s,
                  job_id, WorkerLost.code],
        )).decode()  # fmt: skip
        if taken == "run":
            self._running = asyncio.get_running_loop().create_task(self._run(entry_id, job_id))
            try:
                await asyncio.wait({self._running})  # wait(), not await: a job's failure is not the worker's
            finally:
                self._running = None
        elif taken == "exhausted":
            log.warning("job failed: its attempts are used up", extra={"job": job_id})
            self.metrics.jobs_finished.labels(outcome="failed").inc()
        if taken != "run" or not self._closed:
            await self._done_with(entry_id, job_id)

    async def _done_with(self, entry_id: str, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.key("queue"), GROUP, entry_id)
            pipe.xdel(self.key("queue"), entry_id)
            pipe.delete(self.key("input", job_id))
            await pipe.execute()

    async def _run(self, entry_id: str, job_id: str) -> None:
        """Prepare the job from its raw inputs and compute it as the memory store does; then store its end."""
        assert self._runner is not None
        job = _text(await self.redis.hgetall(self.key("job", job_id)))
        deadline_wall = float(job["accepted"]) + self.settings.job_timeout_s
        deadline = time.monotonic() + (deadline_wall - time.time())
        progress = {"done": 0, "total": int(job.get("total", 1))}

        def report(done: int, total: int) -> None:
            progress["done"], progress["total"] = done, total

        runner = dataclasses.replace(self._runner, deadline=deadline, on_progress=report)
        compute = asyncio.get_running_loop().create_task(self._compute(job_id, runner, deadline))
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(entry_id, job_id, progress, compute))
        try:
            await asyncio.wait({compute})
        except asyncio.CancelledError:  # shutdown past the drain time: the job is left to another replica
            compute.cancel()
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        fields, outcome = self._end_fields(compute, job_id, progress, deadline_wall)
        await self._record_end(job_id, fields, outcome)

    async def _compute(self, job_id: str, runner: JobRunner, deadline: float) -> TransferOutcome | VideoOutcome:
        raw = await self.redis.get(self.key("input", job_id))
        if raw is None:
            raise Internal("the job's inputs are gone from the shared store (expired or deleted); submit it again")
        request = unpack_request(raw)
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            prepared = await self._prepare(request, runner)
            if isinstance(prepared, PreparedVideo):
                return await complete_video(prepared, runner, runner.on_progress)
            return await complete_transfer(prepared, runner, self.metrics)

    async def _heartbeat(self, entry_id: str, job_id: str, progress: dict[str, int], compute: asyncio.Task) -> None:
        """While the job runs: write its progress, keep its queue entry ours (XCLAIM resets its idle time), and
        stop it when a DELETE on any replica flagged it."""
        claim_every = self.settings.jobs_store_claim_idle_s / 3
        claimed_at = time.monotonic()
        key = self.key("job", job_id)
        while not compute.done():
            await asyncio.sleep(HEARTBEAT_S)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(key, mapping={"done": progress["done"], "total": progress["total"]})
                    pipe.hget(key, "cancel")
                    if time.monotonic() - claimed_at >= claim_every:
                        pipe.xclaim(self.key("queue"), GROUP, self.consumer, 0, [entry_id], justid=True)
                        claimed_at = time.monotonic()
                    results = await pipe.execute()
            except RedisError as exc:
                self._outage(exc, "a running job's heartbeat")
                continue
            if results[1] == b"1":
                compute.cancel()

    def _end_fields(
        self, compute: asyncio.Task, job_id: str, progress: dict[str, int], deadline_wall: float
    ) -> tuple[dict[str, Any], TransferOutcome | VideoOutcome | None]:
        fields: dict[str, Any] = {"finished": repr(time.time()), **progress}
        error: ServiceError | None = None
        if compute.cancelled():
            return {**fields, "state": "cancelled"}, None
        exc = compute.exception()
        if isinstance(exc, TimeoutError):
            error = DeadlineExceeded(
                f"the job did not finish within STYA2K_JOB_TIMEOUT_S={self.settings.job_timeout_s:g} s of its "
                f"acceptance ({progress['done']} of {progress['total']} steps done)"
            )
        elif isinstance(exc, ServiceError):
            error = exc
        elif exc is not None:
            log.error("job %s failed unexpectedly", job_id, exc_info=exc)
            error = Internal(f"internal error while computing this job ({type(exc).__name__})")
        if error is not None:
            return {**fields, "state": "failed", "error_code": error.code, "error_message": error.message}, None
        outcome = compute.result()
        size, limit = len(outcome.body), self.settings.job_result_bytes
        if size > limit:
            error = ImageTooLarge(
                f"the result ({byte_size(size)}) is larger than all the memory kept for results "
                f"(STYA2K_JOB_RESULT_BYTES={byte_size(limit)}); ask for a smaller max_side or a compressed format"
            )
            return {**fields, "state": "failed", "error_code": error.code, "error_message": error.message}, None
        result = {"result_format": str(outcome.format), "result_width": outcome.width,
                  "result_height": outcome.height, "result_bytes": size, "result_media_type": outcome.media_type,
                  "result_details": json.dumps(outcome.details()), "done": progress["total"]}  # fmt: skip
        return {**fields, **result, "state": "done"}, outcome

    async def _record_end(self, job_id: str, fields: dict[str, Any], outcome: Any) -> None:
        """Write the job's end; while Redis is away, retry until it is back (for up to the claim time: later
        another replica has taken the job over anyway)."""
        pairs = [str(v) for item in fields.items() for v in item]
        give_up = time.monotonic() + self.settings.jobs_store_claim_idle_s
        while True:
            try:
                if outcome is None:
                    ended = await self._end_script(keys=[self.key("job", job_id)],
                                                   args=[self.consumer, self.forget_s, *pairs])  # fmt: skip
                else:
                    ended = await self._store_result(
                        keys=[self.key("job", job_id), self.key("result", job_id), self.key("results"),
                              self.key("result_bytes")],
                        args=[self.consumer, job_id, outcome.body, max(1, round(self.settings.job_result_ttl_s)),
                              self.forget_s, self.settings.job_result_bytes, self.prefix, fields["finished"],
                              "dropped to make room for newer results (STYA2K_JOB_RESULT_BYTES="
                              f"{self.settings.job_result_bytes})", *pairs],
                    )  # fmt: skip
                break
            except RedisError as exc:
                self._outage(exc, "storing a job's end")
                if time.monotonic() > give_up:
                    log.error("job %s ended but Redis stayed away; its end is lost", job_id)
                    return
                await asyncio.sleep(RETRY_S)
        state = fields["state"]
        if ended:
            self.metrics.jobs_finished.labels(outcome=state).inc()
            log.info("job %s", state, extra={"job": job_id, "error": fields.get("error_code")})
        else:
            log.warning("job %s ended here, but another replica had taken it over or it was cancelled", job_id)

    # ------------------------------------------------------------------------------------------- sweeping
    async def _sweep_forever(self) -> None:
        period = min(1.0, self.settings.job_result_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self._sweep()
            except RedisError as exc:
                self._outage(exc, "the sweeper")

    async def _sweep(self) -> None:
        """Results past their TTL leave the byte budget; queued jobs past their time limit fail; the gauges."""
        now, ttl = time.time(), self.settings.job_result_ttl_s
        for raw in await self.redis.zrangebyscore(self.key("results"), "-inf", now - ttl):
            await self._expire(raw.decode(), f"results are kept STYA2K_JOB_RESULT_TTL_S={ttl:g} s after the job ends")
        late = f"the job did not finish within STYA2K_JOB_TIMEOUT_S={self.settings.job_timeout_s:g} s of its " \
               "acceptance while queued; not computed"  # fmt: skip
        for raw in await self.redis.zrangebyscore(self.key("queued"), "-inf", now - self.settings.job_timeout_s):
            job_id = raw.decode()
            await self._stop(keys=[self.key("job", job_id), self.key("queued")],
                             args=[job_id, repr(now), self.forget_s, "failed", DeadlineExceeded.code, late])
        queued, oldest = await self._queue_depth()
        self.metrics.jobs_queued.set(queued)
        self.metrics.jobs_oldest_queued_age.set(oldest)
        self.metrics.jobs_running.set(int(self._running is not None))
        self.metrics.job_result_bytes.set(int(await self.redis.get(self.key("result_bytes")) or 0))
        if time.monotonic() - self._consumers_checked >= self.settings.jobs_store_claim_idle_s:
            self._consumers_checked = time.monotonic()
            await self._forget_dead_consumers()

    async def _forget_dead_consumers(self) -> None:
        """Every process is a consumer of its own, so each restart leaves one behind in the group: remove those
        idle for DEAD_CONSUMER_CLAIMS claim times that hold no entry (their entries are claimed by the living
        first). XREADGROUP makes a consumer again if one was only slow."""
        dead_ms = DEAD_CONSUMER_CLAIMS * self.settings.jobs_store_claim_idle_s * 1000
        try:
            consumers = await self.redis.xinfo_consumers(self.key("queue"), GROUP)
        except ResponseError:  # no queue or group yet: nothing to forget
            return
        for consumer in consumers:
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else str(consumer["name"])
            if name == self.consumer or int(consumer["pending"]) > 0 or int(consumer["idle"]) < dead_ms:
                continue
            if await self._forget_consumer(keys=[self.key("queue")], args=[GROUP, name]):
                log.info("forgot the job queue consumer %s (idle %.0f s, no entries)", name, consumer["idle"] / 1000)

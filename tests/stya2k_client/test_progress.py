"""``Job.wait``'s progress reports (issue 32): once per change of (done, total), the last value once, with the end
state. ``_Watch`` is the decision both clients poll through; fed the statuses a server reports, in order."""

from __future__ import annotations

from stya2k_client.client import JobStatus, _Watch


def _status(state: str, done: int, total: int) -> JobStatus:
    return JobStatus.from_json({"id": "r-1", "state": state, "progress": {"done": done, "total": total}})


def _reports(states: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    reports: list[JobStatus] = []
    watch = _Watch("r-1", None, reports.append, poll_s=0.0)
    ended = [watch.see(_status(*seen)) for seen in states]
    assert ended == [state in ("done", "failed", "cancelled", "expired") for state, _, _ in states]
    return [(r.state, r.done, r.total) for r in reports]


def test_each_value_is_reported_once_and_the_last_with_the_done_state() -> None:
    polls = [("queued", 0, 1), ("queued", 0, 1), ("running", 0, 4), ("running", 2, 4), ("running", 2, 4),
             ("running", 4, 4), ("running", 4, 4), ("done", 4, 4)]  # fmt: skip
    assert _reports(polls) == [("queued", 0, 1), ("running", 0, 4), ("running", 2, 4), ("done", 4, 4)]


def test_a_job_seen_only_when_done_is_reported_once() -> None:
    assert _reports([("done", 1, 1)]) == [("done", 1, 1)]
    assert _reports([("queued", 0, 1), ("running", 1, 1), ("done", 1, 1)]) == [("queued", 0, 1), ("done", 1, 1)]


def test_an_end_without_new_progress_is_left_to_wait_to_raise() -> None:
    polls = [("running", 2, 6), ("failed", 2, 6)]
    assert _reports(polls) == [("running", 2, 6)]

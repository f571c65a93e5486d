"""service.workload: the jobs' memory budget, the compute rate and the running job's pace (units; the HTTP side
is tests/service/test_job_attacks.py)."""

from __future__ import annotations

import math

import pytest

from service.errors import JobQueueFull, JobTooLarge, JobTooLong
from service.workload import MAX_SAMPLE_STEP, MIN_SAMPLE_PIXELS, ComputeRate, MemoryBudget, Pace


def test_memory_budget_refuses_alone_too_large_413_and_no_room_now_429_and_trues_up() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(JobTooLarge, match="STYA2K_JOBS_MEMORY_BYTES"):
        budget.reserve(101, "this job", retry_after_s=3)
    first = budget.reserve(80, "this job", retry_after_s=3)
    with pytest.raises(JobQueueFull) as full:
        budget.reserve(30, "this job", retry_after_s=3)
    assert full.value.retry_after_s == 3
    budget.resize(first, 50)  # the estimate was an upper bound: what the job really holds
    second = budget.reserve(30, "this job", retry_after_s=3)
    assert budget.used == 80 and budget.peak == 80
    budget.release(first)
    budget.release(first)  # twice is harmless: a job ends once, but a failed path may release again
    assert budget.used == 30
    budget.release(second)
    assert budget.used == 0


def test_compute_rate_ignores_small_turns_and_one_sample_moves_it_by_at_most_its_step() -> None:
    rate = ComputeRate()
    assert rate.estimate_s(10**6) is None
    rate.observe(MIN_SAMPLE_PIXELS - 1, 100.0)  # fixed costs dominate: not a sample
    assert rate.seconds_per_pixel is None
    rate.observe(10**6, 1.0)
    assert rate.estimate_s(2 * 10**6) == pytest.approx(2.0)
    rate.observe(10**6, 1000.0)  # an odd turn (a stall, new styles): capped
    assert rate.seconds_per_pixel is not None and rate.seconds_per_pixel <= 1e-6 * (1 + 0.3 * (MAX_SAMPLE_STEP - 1))
    assert rate.info()["samples"] == 2


def test_pace_judges_from_the_end_of_the_first_step_with_a_margin() -> None:
    pace = Pace(deadline=100.0, unit="frame")
    pace.check(1, 100, now=50.0)  # the first step (decoder start-up, styles): only starts the clock
    pace.check(5, 100, now=51.0)  # too few steps (under 10% of them) to judge
    with pytest.raises(JobTooLong, match="STYA2K_JOB_TIMEOUT_S"):
        pace.check(11, 100, now=60.0)  # 1 s per frame, 89 left, 40 s to go: even 1.25x faster misses it


def test_pace_lets_a_job_that_fits_within_its_margin_run_and_never_judges_without_a_deadline() -> None:
    pace = Pace(deadline=100.0, unit="frame")
    pace.check(1, 100, now=0.0)
    pace.check(20, 100, now=19.0)  # 1 s per frame, 80 left, 81 s to go: it fits
    pace.check(99, 100, now=98.0)
    endless = Pace(deadline=math.inf, unit="tile step")
    endless.check(1, 10**6, now=0.0)
    endless.check(10**5, 10**6, now=10**6)

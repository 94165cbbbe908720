"""The randomized fault campaign (tests/chaos_campaign.py), a few runs:
random SIGKILL / SIGSTOP of servers and workers in exact-count jobs under
ULFM. Every run must end exact, or, where the faults exceed what the job
survives, fail with a clear message: never hang, never count wrong.
MPIPS_CHAOS_RUNS=100 for a long campaign (or python -m tests.chaos_campaign)."""

import os

import pytest

from tests.chaos_campaign import campaign, make_plan, table

pytestmark = pytest.mark.integration


def test_plans_stay_within_what_they_claim():
    plans = [make_plan(seed) for seed in range(500)]
    for p in plans:
        assert p.faults and all(0 < r < p.ranks for r, _, _ in p.faults)
        assert p.replication < p.servers
    survivable = [p for p in plans if p.survivable]
    assert 0.8 < len(survivable) / len(plans) < 0.97  # some runs must fail clearly
    kinds = {(sig, r <= p.servers) for p in plans for r, sig, _ in p.faults}
    assert kinds == {("KILL", True), ("KILL", False), ("STOP", True), ("STOP", False)}
    assert {p.replication for p in plans} == {1, 2}


def test_random_faults_never_hang_or_miscount(tmp_path):
    runs = int(os.environ.get("MPIPS_CHAOS_RUNS", "6"))
    lines: list[str] = []
    tally = campaign(runs, seed=int(os.environ.get("MPIPS_CHAOS_SEED", "1")),
                     workdir=tmp_path, echo=lines.append)
    print("\n".join(lines))
    print(table(tally))
    assert tally["exact"] + tally["failed-clearly"] == runs, "\n".join(lines)
    assert tally["exact"] > 0

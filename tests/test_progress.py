"""Progress lines: named fields printed one way, as text or as JSON."""

import json
import math
import random

from mpips.scheduler.progress import WorkerCounters, format_line, text_value


def test_numbers_have_one_format():
    assert text_value(56465) == "56465"  # counts as they are
    assert text_value(61650.2) == "61.65k" and text_value(4.851e6) == "4.851M"
    assert text_value(2.5e9) == "2.5G" and text_value(9999.5) == "10000"
    assert text_value(0.121712) == "0.1217" and text_value(3.0) == "3"
    assert text_value("x") == "x"


def test_text_and_json_lines_hold_the_same_known_fields():
    fields = {"epoch": 1.5, "of": 5, "examples_per_s": 61650.2, "train_loss": math.nan,
              "test_auc": None, "eta_s": 3}
    text = format_line(12.34, fields)
    assert text == "[   12.3s] epoch 1.5  of 5  examples/s 61.65k  eta s 3"
    assert "nan" not in text and "None" not in text  # no loss before examples
    record = json.loads(format_line(12.34, fields, "json"))
    assert record == {"elapsed": 12.34, "epoch": 1.5, "of": 5, "examples_per_s": 61650.2,
                      "eta_s": 3}


def test_worker_counters_keep_the_sums_of_the_last_reports():
    counters, rng = WorkerCounters(), random.Random(4)
    for _ in range(2000):
        rank = rng.randrange(20)
        if rng.random() < 0.1:
            counters.drop(rank)
        else:
            report = {"examples": rng.randrange(1000), "loss_sum": rng.random(), "name": "x"}
            if rng.random() < 0.5:
                report["test_auc"] = rng.random()
            counters.set(rank, report)
        exact, kept = counters.exact_totals(), counters.totals()
        assert set(kept) == set(exact)  # a number no worker reports now is gone
        assert all(abs(kept[k] - exact[k]) < 1e-9 * max(1.0, abs(exact[k])) for k in exact)
    assert counters.get(99) is None and len(counters) == len(list(counters.values()))

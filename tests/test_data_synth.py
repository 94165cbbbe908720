"""Synthetic data: deterministic by seed, independent of ranks, planted model usable."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np

from data_tools.convert import OutputSpec
from data_tools.synth import synth_ctr, synth_lda
from tests.fixtures.data_helpers import read_all
from tests.mpitools import run_mpi

CTR = dict(rows=20_000, fields=8, vocab=5_000, zipf=1.1, density=0.3, weight_scale=1.5,
           bias=-1.0, seed=4, chunk_rows=3_000)


def test_ctr_deterministic_and_planted(tmp_path):
    spec = dict(target_rows=6_000)
    synth_ctr(OutputSpec(str(tmp_path / "a"), **spec), **CTR)
    synth_ctr(OutputSpec(str(tmp_path / "b"), **spec), **CTR)
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ma["partitions"] == mb["partitions"] and len(ma["partitions"]) == 4
    labels, indptr, keys, _ = read_all(tmp_path / "a")
    assert labels.size == 20_000 and np.all(np.diff(indptr) == 8)
    with h5py.File(tmp_path / "a" / "true_model.h5") as h5:
        model_keys, weights, bias = h5["keys"][:], h5["weights"][:], h5.attrs["bias"]
    # The saved model explains the labels: its scores separate the classes.
    pos = np.searchsorted(model_keys, keys).clip(0, model_keys.size - 1)
    w = np.where(model_keys[pos] == keys, weights[pos], 0.0)
    score = bias + np.add.reduceat(w, indptr[:-1])
    order = np.argsort(score)
    ranks = np.empty(labels.size)
    ranks[order] = np.arange(labels.size)
    n1 = labels.sum()
    auc = (ranks[labels == 1].sum() - n1 * (n1 - 1) / 2) / (n1 * (labels.size - n1))
    assert auc > 0.8
    # Zipf popularity: the most frequent key of a field is far above average.
    assert np.unique(keys, return_counts=True)[1].max() > 20 * keys.size / np.unique(keys).size


def test_ctr_same_data_on_two_ranks(tmp_path):
    args = ["-m", "data_tools", "synth", "ctr", "--rows", "5000", "--fields", "5",
            "--vocab", "1000", "--rows-per-partition", "1000", "--chunk-rows", "700"]
    for ranks in (1, 2):
        proc = run_mpi(ranks, sys.executable, *args, "-o", str(tmp_path / f"r{ranks}"), timeout=90)
        assert proc.returncode == 0, proc.stderr
    m1 = json.loads((tmp_path / "r1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert m1["partitions"] == m2["partitions"] and len(m1["partitions"]) == 5


def test_lda_counts_follow_topics(tmp_path):
    synth_lda(OutputSpec(str(tmp_path / "lda"), target_rows=700), docs=2_000, vocab=300,
              topics=4, doc_length=80.0, alpha=0.1, beta=0.05, seed=1, chunk_rows=500)
    labels, indptr, words, counts = read_all(tmp_path / "lda")
    assert labels.size == 2_000 and words.max() < 300
    assert counts.min() >= 1 and np.all(np.diff(indptr) > 0)
    for row in range(5):  # words unique within a document
        row_words = words[indptr[row]:indptr[row + 1]]
        assert np.unique(row_words).size == row_words.size
    with h5py.File(tmp_path / "lda" / "true_topics.h5") as h5:
        topics = h5["topics"][:]
    assert topics.shape == (4, 300)
    np.testing.assert_allclose(topics.sum(axis=1), 1, rtol=1e-5)
    # Corpus word frequencies are a mixture of the topics.
    freq = np.bincount(words.astype(np.int64), weights=counts, minlength=300)
    mix, *_ = np.linalg.lstsq(topics.T, freq / freq.sum(), rcond=None)
    assert np.abs(topics.T @ mix - freq / freq.sum()).sum() < 0.1

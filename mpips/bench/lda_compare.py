"""LDA benchmark: mpips against gensim's LdaMulticore and scikit-learn's
LatentDirichletAllocation, on the same documents and split, scored by the same code.

    python -m mpips.bench.lda_compare --data data/news20_lda --topics 20 100

For every number of topics it runs (one after the other, so they do not share
the cores) the mpips job (``mpiexec`` with a timeout, ``jobs/lda_news20.toml``
unless ``--job``), gensim's LdaMulticore (``workers`` = cores - 1, passes
evaluated one at a time) and scikit-learn's online variational Bayes
(``partial_fit`` over minibatches, ``n_jobs`` = cores, evaluated after every
epoch). The held-out documents are the app's (:func:`heldout_mask` with the
job's seed and fraction); every model's topic-word distributions go through
:func:`completion_loglik` (document completion, the same EM fold-in and alpha)
and :func:`umass` over the training documents. Times are training seconds
without evaluation; for mpips also the job's wall time since start (data
loading and evaluations included). The baselines use their default priors
(1/K), which gave them lower perplexity here than the job's alpha/beta.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..apps.lda.model import (
    completion_loglik,
    completion_split,
    cooccurrence,
    heldout_mask,
    top_words,
    umass,
)
from ..data import PartitionReader, load_manifest


def load_split(folder: str, fraction: float, seed: int
               ) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix, int]:
    """(training docs, held-out observed half, held-out evaluated half, V)."""
    manifest = load_manifest(folder)
    vocab = int(manifest.raw.get("hashing", {}).get("vocab_size")
                or manifest.raw.get("generator", {}).get("vocab"))
    parts = []
    for p in manifest.partitions:
        with PartitionReader(p.path) as reader:
            mb = reader.read(0, reader.rows)
        parts.append(sp.csr_matrix((mb.values.astype(np.int64), mb.keys.astype(np.int64),
                                    mb.indptr), shape=(mb.rows, vocab)))
    docs = sp.vstack(parts).tocsr()
    held = heldout_mask(np.arange(docs.shape[0]), fraction, seed)
    test = docs[held]
    obs, ev = completion_split(test.indptr, test.indices.astype(np.uint64),
                               test.data.astype(np.int64))
    obs.resize((obs.shape[0], vocab))
    ev.resize((ev.shape[0], vocab))
    return docs[~held], obs, ev, vocab


class Scorer:
    def __init__(self, train: sp.csr_matrix, obs, ev, alpha: float, top_n: int):
        self.binary = train.copy()
        self.binary.data[:] = 1
        self.obs, self.ev, self.alpha, self.top_n = obs, ev, alpha, top_n

    def __call__(self, topic_word: np.ndarray) -> tuple[float, float]:
        topic_word = np.asarray(topic_word, np.float64)
        phi = (topic_word / topic_word.sum(axis=1, keepdims=True)).T
        ll, n = completion_loglik(phi, self.obs, self.ev, self.alpha)
        doc_freq, co_freq = cooccurrence(self.binary, top_words(topic_word, self.top_n))
        return float(np.exp(-ll / n)), float(umass(doc_freq, co_freq).mean())


def run_gensim(train, k, passes, score, seed, workers):
    from gensim.matutils import Sparse2Corpus
    from gensim.models import LdaMulticore
    corpus = Sparse2Corpus(train, documents_columns=False)
    id2word = {i: str(i) for i in range(train.shape[1])}
    rows, spent, model = [], 0.0, None
    for p in range(passes):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model is None:
                model = LdaMulticore(corpus, num_topics=k, id2word=id2word, workers=workers,
                                     passes=1, random_state=seed, chunksize=2000)
            else:
                model.update(corpus)
        spent += time.perf_counter() - t0
        perplexity, coherence = score(model.get_topics())
        rows.append({"method": "gensim", "step": p + 1, "seconds": spent,
                     "perplexity": perplexity, "umass": coherence})
        _show(k, rows[-1])
    return rows


def run_sklearn(train, k, epochs, score, seed, jobs, batch):
    from sklearn.decomposition import LatentDirichletAllocation
    model = LatentDirichletAllocation(n_components=k, learning_method="online", n_jobs=jobs,
                                      random_state=seed, total_samples=train.shape[0],
                                      learning_offset=10.0)
    rows, spent = [], 0.0
    for e in range(epochs):
        t0 = time.perf_counter()
        for a in range(0, train.shape[0], batch):
            model.partial_fit(train[a:a + batch])
        spent += time.perf_counter() - t0
        perplexity, coherence = score(model.components_)
        rows.append({"method": "sklearn", "step": e + 1, "seconds": spent,
                     "perplexity": perplexity, "umass": coherence})
        _show(k, rows[-1])
    return rows


def run_mpips(args, k, out: Path):
    cmd = ["timeout", str(int(args.timeout)), "mpiexec", "-n", str(args.ranks),
           "--oversubscribe", *args.mpips.split(), "train", args.job,
           "-o", f"lda.topics={k}", "-o", f"job.output={out}",
           "-o", f"data.train={args.data}", "-o", f"lda.sweeps={args.sweeps}",
           "-o", f"lda.alpha={args.alpha}", "-o", f"job.seed={args.seed}",
           "-o", f"lda.heldout_fraction={args.heldout}"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_mpi_yield_when_idle="1")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if proc.returncode:
        raise SystemExit(f"mpips job failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        rows.append({"method": "mpips", "step": m["sweep"], "seconds": m["train_seconds"],
                     "wall": m["wall_seconds"], "perplexity": m["heldout_perplexity"],
                     "umass": m["umass"]})
        _show(k, rows[-1])
    return rows, (out / "topics.txt").read_text()


def _show(k, row):
    wall = f" (wall {row['wall']:.1f} s)" if "wall" in row else ""
    print(f"K={k:<4d} {row['method']:8s} step {row['step']:3d}  {row['seconds']:7.1f} s"
          f"{wall}  perplexity {row['perplexity']:8.1f}  UMass {row['umass']:7.3f}", flush=True)


def summary(k, rows) -> dict:
    base = [r for r in rows if r["method"] != "mpips"]
    best = min(base, key=lambda r: r["perplexity"])
    mine = [r for r in rows if r["method"] == "mpips"]
    reach = next((r for r in mine if r["perplexity"] <= best["perplexity"]), None)
    out = {"topics": k, "target_method": best["method"], "target_perplexity": best["perplexity"],
           "target_seconds": best["seconds"], "mpips_best": min(r["perplexity"] for r in mine)}
    if reach:
        out.update(mpips_train_seconds=reach["seconds"], mpips_wall_seconds=reach["wall"],
                   mpips_sweep=reach["step"], met=reach["wall"] < best["seconds"])
    else:
        out["met"] = False
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpips.bench.lda_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/news20_lda")
    p.add_argument("--job", default="jobs/lda_news20.toml")
    p.add_argument("--topics", type=int, nargs="+", default=[20, 100])
    p.add_argument("--sweeps", type=int, default=60, help="mpips Gibbs sweeps")
    p.add_argument("--passes", type=int, default=6, help="gensim passes")
    p.add_argument("--epochs", type=int, default=6, help="sklearn epochs")
    p.add_argument("--alpha", type=float, default=0.1, help="mpips alpha, and the fold-in "
                   "alpha of the evaluation for every model")
    p.add_argument("--heldout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="runs/lda_bench")
    p.add_argument("--mpips", default=f"{sys.executable} -m mpips",
                   help="the command that runs mpips under mpiexec")
    p.add_argument("--skip", nargs="*", default=[], choices=["mpips", "gensim", "sklearn"])
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    train, obs, ev, vocab = load_split(args.data, args.heldout, args.seed)
    print(f"data {args.data}: {train.shape[0]} training docs ({int(train.sum())} tokens), "
          f"{obs.shape[0]} held-out docs ({int(obs.sum())} observed + {int(ev.sum())} "
          f"evaluated tokens), {vocab} words; {cores} cores; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    score = Scorer(train, obs, ev, args.alpha, 10)
    results = []
    for k in args.topics:
        out = Path(args.out) / f"k{k}"
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        if "mpips" not in args.skip:
            mine, topics = run_mpips(args, k, out)
            rows += mine
        if "gensim" not in args.skip:
            rows += run_gensim(train, k, args.passes, score, args.seed, max(1, cores - 1))
        if "sklearn" not in args.skip:
            rows += run_sklearn(train, k, args.epochs, score, args.seed, cores, 1000)
        with open(out / "bench.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"topics": k, **r}) + "\n")
        if "mpips" not in args.skip and len({r["method"] for r in rows}) > 1:
            s = summary(k, rows)
            results.append(s)
            print(json.dumps(s), flush=True)
            print("\n".join(topics.splitlines()[:5]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

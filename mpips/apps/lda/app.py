"""Latent Dirichlet Allocation by distributed collapsed Gibbs sampling.

Model: the word-topic counts live on the servers in table ``lda_wt`` (key =
``word_key(word id)``, a mix64 of the id so words spread over the ring's
ranges; vdim = topics; int32 counts; ``Add`` handle). One more row of the same
table, under ``TOTALS_KEY``, holds the topic totals, so a block's pull brings
its words' rows and the totals in one request. Document-topic counts and the
topic assignments stay on the worker that holds the document.

Data placement: LDA must revisit the same documents every sweep together with
their assignments, so partitions are dealt to workers once, at start, biggest
first to the least loaded (:func:`mpips.data.queue.split_by_size`), and each
worker keeps its documents, with their assignments, in memory for all sweeps.
A lost worker's documents would have to be re-read and re-initialised (not
done here).

Sweeps are tasks: the work queue is an :class:`~mpips.consistency.IterationQueue`
(sweep s is iteration s - 1 of every worker), so ``[consistency] policy`` says
when a worker may start a sweep: ``sequential`` (a sweep starts once every
worker finished the one before: BSP over sweeps), ``eventual`` (no wait), or
``bounded_delay:TAU`` (sweep s starts once every live worker finished sweep
s - 1 - TAU), enforced by the scheduler's task clock; a sweep counts as
finished when its pushes are acknowledged.

Sampling: a worker's tokens are cut into blocks of whole documents
(``block_tokens``). For each block it pulls its words' rows and the totals
(the next block's pull is sent before this block is sampled, so transfer and
compute overlap), resamples every token of the block in ``phases`` vectorised
steps (:class:`~mpips.apps.lda.model.GibbsBlocks`): word-topic counts are stale
within the block as in AD-LDA / Yahoo LDA, document-topic counts only within a
phase. It pushes the count deltas (int32, added on the servers).

Evaluation every ``eval_every`` sweeps (after a barrier, so counts are exact):
training log-likelihood per token (from the last sweep's sampling
distributions), held-out perplexity by document completion on documents held
out by a fixed function of their global row (``heldout_fraction``), and UMass
coherence of each topic's top words over the training documents. Workers add
their sums into table ``lda_stats``; worker 0 turns them into metrics.
At the end servers write model shards, the scheduler merges them into
``model.h5`` and writes ``topics.txt`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ...app import App, Table
from ...config import Option, non_negative, positive, section
from ...consistency import IterationQueue
from ...data import PartitionReader, load_manifest
from ...data.queue import split_by_size
from ...handles import Add
from ...kv.worker import KVWorker
from ...layout import WORKER
from ...postoffice import WORKERS, Postoffice
from ..progress import Deltas
from .model import (
    TOTALS_KEY,
    GibbsBlocks,
    check_counts,
    completion_loglik,
    completion_split,
    cooccurrence,
    heldout_mask,
    key_word,
    top_words,
    umass,
    word_key,
)

# scipy.sparse is imported where a matrix is made, so that the ranks that
# never make one (the scheduler, the servers) start without importing it.
if TYPE_CHECKING:
    import scipy.sparse as sp

section("lda", {
    "topics": Option(int, 20, "number of topics K", positive),
    "alpha": Option(float, 0.1, "document-topic Dirichlet prior", positive),
    "beta": Option(float, 0.01, "topic-word Dirichlet prior", positive),
    "sweeps": Option(int, 50, "Gibbs sweeps over the training tokens", positive),
    "block_tokens": Option(int, 100_000, "tokens per block (one pull + one push each)",
                           positive),
    "phases": Option(int, 4, "vectorised steps per block; document-topic counts are "
                     "stale only within a step", positive),
    "max_inflight": Option(int, 2, "pushes a worker keeps outstanding", positive),
    "heldout_fraction": Option(float, 0.1, "documents held out for perplexity "
                               "(fixed by their global row number)", non_negative),
    "eval_every": Option(int, 5, "sweeps between evaluations (and after the last)", positive),
    "eval_iters": Option(int, 50, "EM steps fitting held-out documents' topic mixtures",
                         positive),
    "top_words": Option(int, 10, "top words per topic for coherence and topics.txt",
                        positive),
    "vocab": Option(str, "", "vocabulary file (one word per line; gz ok): word id = line "
                    "number from 0, or key = fnv1a64(word) for 'tokens' data"),
    "vocab_size": Option(int, 0, "V for the prior; 0: from the data set's manifest",
                         non_negative),
    "straggle": Option(float, 0.0, "seconds worker 0 sleeps per sweep: a straggler, for "
                       "consistency tests and benchmarks", non_negative),
    "check_counts": Option(bool, False, "after every sweep, check on worker 0 that the "
                           "servers' counts add up to the number of tokens (tests)"),
})

STATS_INIT = 1 << 40  # stats table key of the tokens count pushed at start
_EVAL_STRIDE = 1 << 32  # stats keys of evaluation e: e * stride + slot


def read_vocab(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f]
    except OSError as e:
        raise ValueError(f"[lda] vocab = {path!r}: cannot read: {e}") from None


class LdaApp(App):
    name = "lda"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.lc = cfg.lda
        if not cfg.data.train:
            raise ValueError(f"{cfg.source}: [data] train is empty: LDA needs a converted "
                             "bag-of-words data set (data_tools convert --format uci-docword)")
        self.manifest = load_manifest(cfg.data.train)
        raw = self.manifest.raw
        self.method = raw.get("hashing", {}).get("method", "identity")
        vocab_size = (self.lc.vocab_size or raw.get("hashing", {}).get("vocab_size")
                      or raw.get("generator", {}).get("vocab") or 0)
        if not vocab_size and self.lc.vocab:
            vocab_size = len(read_vocab(self.lc.vocab))
        if not vocab_size:
            raise ValueError(f"{cfg.source}: [lda] vocab_size is 0 and {cfg.data.train}'s "
                             "manifest does not give the vocabulary size: set vocab_size")
        self.vocab_size = int(vocab_size)
        self.first_row = {p.path: p.first_row for p in self.manifest.partitions}
        self._deltas = Deltas()
        self._printed_eval = -1

    def tables(self) -> list[Table]:
        return [Table("lda_wt", vdim=self.lc.topics, dtype="int32", handle=Add()),
                Table("lda_stats", vdim=1, dtype="float64", handle=Add())]

    def work_queue(self) -> IterationQueue:
        # Sweeps are the tasks; [consistency] policy says when one may start.
        return IterationQueue(self.lc.sweeps)

    # ---- worker ----------------------------------------------------------------
    def _load(self, po: Postoffice) -> tuple[list, list]:
        """This worker's partitions, dealt by size; (train, held-out) pieces of
        (indptr, words, counts)."""
        train, held = [], []
        identity = self.method == "identity"
        parts = self.manifest.partitions
        mine = split_by_size([p.rows for p in parts], po.num_workers)[po.worker_index()]
        for info in (parts[i] for i in mine):
            path = info.path
            with PartitionReader(path, expected=info) as reader:
                mb = reader.read(0, reader.rows)
            counts = check_counts(mb.indptr, mb.keys, mb.values,
                                  self.vocab_size if identity else None, path)
            rows = self.first_row[path] + np.arange(mb.rows)
            out = heldout_mask(rows, self.lc.heldout_fraction, self.cfg.job.seed)
            for mask, dest in ((~out, train), (out, held)):
                idx = np.flatnonzero(mask)
                lengths = np.diff(mb.indptr)[idx]
                take = np.repeat(mb.indptr[idx], lengths) + (
                    np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
                indptr = np.concatenate([[0], np.cumsum(lengths)])
                dest.append((indptr, mb.keys[take], counts[take]))
        return train, held

    @staticmethod
    def _concat(pieces: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not pieces:
            return np.zeros(1, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
        offsets = np.cumsum([0] + [p[0][-1] for p in pieces[:-1]])
        indptr = np.concatenate([[0]] + [p[0][1:] + o for p, o in zip(pieces, offsets,
                                                                        strict=True)])
        return (indptr.astype(np.int64), np.concatenate([p[1] for p in pieces]),
                np.concatenate([p[2] for p in pieces]))

    def _eval_keys(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Sorted kv keys of ``words`` plus the totals key; positions of the words'
        rows and of the totals row in the sorted keys."""
        keys = np.concatenate([word_key(words), [TOTALS_KEY]])
        order = np.argsort(keys)
        where = np.empty_like(order)
        where[order] = np.arange(order.size)
        return keys[order], where[:-1], int(where[-1])

    def before_mpi(self, role: str | None) -> None:
        if role == WORKER:  # only workers make matrices (evaluation's documents)
            import scipy.sparse  # noqa: F401

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        lc, k = self.lc, self.lc.topics
        t_start = time.monotonic()
        wt, stats = KVWorker(po, "lda_wt"), KVWorker(po, "lda_stats")
        rng = np.random.default_rng([self.cfg.job.seed, 7, po.worker_index()])
        train_pieces, held_pieces = self._load(po)
        tr_indptr, tr_words, tr_counts = self._concat(train_pieces)
        ho_indptr, ho_words, ho_counts = self._concat(held_pieces)
        gibbs = GibbsBlocks(tr_indptr, tr_words, tr_counts, k, lc.block_tokens, lc.phases, rng)
        n_blocks = len(gibbs.block_docs) if gibbs.num_tokens else 0
        block_req = [self._eval_keys(gibbs.vocab[gibbs.block_words[b]]) for b in range(n_blocks)]
        # Evaluation inputs, built once: all words' keys (for top words), the
        # held-out halves, and the training documents as a binary matrix.
        all_words = (np.arange(self.vocab_size, dtype=np.uint64) if self.method == "identity"
                     else np.unique(np.concatenate([tr_words, ho_words])))
        all_req = self._eval_keys(all_words)
        col_of = (lambda w: w.astype(np.int64)) if self.method == "identity" else (
            lambda w: np.searchsorted(all_words, w))
        width = all_words.size
        observed, evaluated = completion_split(ho_indptr, col_of(ho_words), ho_counts)
        observed.resize((observed.shape[0], width))
        evaluated.resize((evaluated.shape[0], width))
        import scipy.sparse as sp
        train_docs = sp.csr_matrix((np.ones(tr_words.size), col_of(tr_words), tr_indptr),
                                   shape=(tr_indptr.size - 1, width))

        # Initial counts: this worker's random assignments, plus its token count.
        init_keys, init_pos, init_tot = self._eval_keys(gibbs.vocab)
        vals = np.zeros((init_keys.size, k), np.int32)
        vals[init_pos] = gibbs.word_topic()
        vals[init_tot] = np.bincount(gibbs.z, minlength=k)
        wt.wait(wt.push(init_keys, vals))
        stats.wait(stats.push(np.array([STATS_INIT], np.uint64),
                              np.array([[gibbs.num_tokens]], np.float64)))
        po.barrier(WORKERS)
        total_tokens = int(stats.wait(stats.pull(np.array([STATS_INIT], np.uint64)))[0, 0])

        counters: dict[str, Any] = {"tokens": 0, "train_ll": 0.0, "ll_tokens": 0}
        history: list[dict[str, Any]] = []
        train_seconds = 0.0
        last_report = time.monotonic()
        task = po.next_task()  # sweeps are tasks: the policy says when one may start
        while task is not None:
            sweep = task["iteration"] + 1
            t0 = time.monotonic()
            if lc.straggle and po.worker_index() == 0:
                time.sleep(lc.straggle)
            evaluate = sweep % lc.eval_every == 0 or sweep == lc.sweeps
            loglik = self._sweep(wt, gibbs, block_req, rng, want_loglik=evaluate,
                                 counters=counters)
            train_seconds += time.monotonic() - t0
            if po.worker_index() == 0:
                counters["sweep"] = sweep  # only worker 0's: the scheduler sums counters
            if evaluate:
                counters["train_ll"] += loglik
                counters["ll_tokens"] += gibbs.num_tokens
            if evaluate or lc.check_counts:
                wt.wait_all()
                po.barrier(WORKERS)  # every push of this sweep is in
                if lc.check_counts and po.worker_index() == 0:
                    self._check_counts(wt, all_req, total_tokens, sweep)
            if evaluate:
                row = self._evaluate(po, wt, stats, all_req, observed, evaluated, train_docs,
                                     loglik, gibbs.num_tokens, len(history))
                if row is not None:
                    row.update(sweep=sweep, train_seconds=round(train_seconds, 3),
                               wall_seconds=round(time.monotonic() - t_start, 3))
                    history.append(row)
                    counters.update({f"eval_{name}": value for name, value in row.items()
                                     if isinstance(value, (int, float))})
                po.report(counters)
                last_report = time.monotonic()
            elif time.monotonic() - last_report >= 1.0:
                po.report(counters)
                last_report = time.monotonic()
            task = po.next_task(done=task)  # its pushes are acknowledged first
        po.barrier(WORKERS)
        return {"counters": counters, "history": history,
                "tokens": gibbs.num_tokens,
                "docs": gibbs.num_docs, "heldout_docs": int(ho_indptr.size - 1)}

    def _sweep(self, wt: KVWorker, gibbs: GibbsBlocks, block_req: list, rng,
               want_loglik: bool, counters: dict[str, Any]) -> float:
        lc = self.lc
        loglik = 0.0
        pushes: list[int] = []
        ahead = wt.pull(block_req[0][0]) if block_req else None
        for b, (keys, pos, tot) in enumerate(block_req):
            pulled = wt.wait(ahead)
            if b + 1 < len(block_req):
                ahead = wt.pull(block_req[b + 1][0])  # in flight while this block samples
            nwk = pulled[pos]
            nk = pulled[tot].astype(np.int64)
            delta, delta_tot, ll = gibbs.sample_block(b, nwk, nk, lc.alpha, lc.beta,
                                                      self.vocab_size, rng, want_loglik)
            loglik += ll
            vals = np.zeros_like(pulled)
            vals[pos] = delta
            vals[tot] = delta_tot
            pushes.append(wt.push(keys, vals))
            while len(pushes) >= lc.max_inflight:
                wt.wait(pushes.pop(0))
            a, e = gibbs.block_tok[b]
            counters["tokens"] += e - a
        for ts in pushes:
            wt.wait(ts)
        return loglik

    def _check_counts(self, wt: KVWorker, req: tuple, total_tokens: int, sweep: int) -> None:
        keys, pos, tot = req
        pulled = wt.wait(wt.pull(keys)).astype(np.int64)
        nwk, nk = pulled[pos], pulled[tot]
        problems = []
        if nwk.sum() != total_tokens:
            problems.append(f"word-topic counts sum to {nwk.sum()}, not {total_tokens} tokens")
        if not np.array_equal(nwk.sum(axis=0), nk):
            problems.append(f"topic totals {nk.tolist()} differ from the column sums "
                            f"{nwk.sum(axis=0).tolist()}")
        if nwk.min() < 0:
            problems.append(f"a negative count {nwk.min()}")
        if problems:
            raise RuntimeError(f"LDA counts inconsistent after sweep {sweep}: "
                               + "; ".join(problems))

    def _evaluate(self, po: Postoffice, wt: KVWorker, stats: KVWorker, req: tuple,
                  observed: sp.csr_matrix, evaluated: sp.csr_matrix, train_docs: sp.csr_matrix,
                  train_ll: float, train_tokens: int, index: int) -> dict[str, Any] | None:
        """Every worker adds its sums; worker 0 returns the metrics row."""
        lc, k, n = self.lc, self.lc.topics, self.lc.top_words
        keys, pos, tot = req
        pulled = wt.wait(wt.pull(keys))
        nwk = pulled[pos].astype(np.float64)
        nk = pulled[tot].astype(np.float64)
        phi = (nwk + lc.beta) / (nk + self.vocab_size * lc.beta)
        ho_ll, ho_tokens = (completion_loglik(phi, observed, evaluated, lc.alpha, lc.eval_iters)
                            if observed.shape[0] else (0.0, 0))
        tops = top_words(phi.T, n)
        doc_freq, co_freq = cooccurrence(train_docs, tops)
        sums = np.concatenate([[ho_ll, ho_tokens, train_ll, train_tokens],
                               doc_freq.ravel(), co_freq.ravel()])
        skeys = np.uint64(index * _EVAL_STRIDE) + np.arange(sums.size, dtype=np.uint64)
        stats.wait(stats.push(skeys, sums))
        po.barrier(WORKERS)
        if po.worker_index() != 0:
            return None
        total = stats.wait(stats.pull(skeys))[:, 0]
        n_top = tops.shape[1]
        doc_freq = total[4:4 + k * n_top].reshape(k, n_top)
        co_freq = total[4 + k * n_top:].reshape(k, n_top, n_top)
        coherence = umass(doc_freq, co_freq)
        return {"train_ll_per_token": total[2] / max(total[3], 1),
                "heldout_perplexity": float(np.exp(-total[0] / max(total[1], 1))),
                "heldout_tokens": int(total[1]), "umass": float(coherence.mean())}

    # ---- servers ------------------------------------------------------------------
    def on_server_stop(self, po, server) -> dict[str, Any]:
        keys, values, _ = server.items("lda_wt")  # the ranges this server owns
        out = Path(self.cfg.job.output)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f".model-shard-{po.rank:05d}.h5"
        is_tot = keys == TOTALS_KEY
        with h5py.File(path, "w") as h5:
            h5.create_dataset("word_ids", data=key_word(keys[~is_tot]))
            h5.create_dataset("word_topic", data=values[~is_tot])
            h5.create_dataset("topic_totals", data=values[is_tot].sum(axis=0, dtype=np.int64))
        return {"model_shard": str(path)}

    # ---- scheduler ------------------------------------------------------------------
    def progress_fields(self, totals: dict[str, float], elapsed: float) -> dict[str, Any]:
        change, seconds = self._deltas.step(totals, elapsed)
        fields: dict[str, Any] = {"sweep": int(totals.get("sweep", 0)),
                                  "tokens_per_s": change.get("tokens", 0) / seconds}
        if "eval_sweep" in totals:  # the last evaluated sweep
            fields.update(eval_sweep=int(totals["eval_sweep"]),
                          train_ll_per_token=totals["eval_train_ll_per_token"],
                          heldout_perplexity=totals["eval_heldout_perplexity"],
                          umass=totals["eval_umass"])
        return fields

    def finish(self, po, workers, servers, elapsed) -> None:
        out = Path(self.cfg.job.output)
        lc = self.lc
        words, counts, totals = [], [], np.zeros(lc.topics, np.int64)
        for s in servers:
            with h5py.File(s["model_shard"], "r") as h5:
                words.append(h5["word_ids"][:])
                counts.append(h5["word_topic"][:])
                totals += h5["topic_totals"][:]
            os.unlink(s["model_shard"])
        word_ids = np.concatenate(words)
        order = np.argsort(word_ids)
        word_ids, word_topic = word_ids[order], np.concatenate(counts)[order]
        temp = out / ".model.h5.tmp"
        with h5py.File(temp, "w") as h5:
            h5.create_dataset("word_ids", data=word_ids)
            h5.create_dataset("word_topic", data=word_topic)
            h5.create_dataset("topic_totals", data=totals)
            h5.attrs.update(alpha=lc.alpha, beta=lc.beta, topics=lc.topics,
                            vocab_size=self.vocab_size, keys=self.method,
                            note="word_topic[i, k]: tokens of word word_ids[i] in topic k")
        temp.replace(out / "model.h5")
        self._write_topics(out / "topics.txt", word_ids, word_topic, totals)
        history = workers[0].get("history", [])
        with open(out / "metrics.jsonl", "a") as f:
            for row in history:
                f.write(json.dumps({"app": "lda", "topics": lc.topics, **row}) + "\n")
        tokens = sum(w.get("tokens", 0) for w in workers)
        print(f"lda: {tokens} training tokens in {sum(w.get('docs', 0) for w in workers)} docs, "
              f"{sum(w.get('heldout_docs', 0) for w in workers)} held-out docs; "
              f"{lc.topics} topics, {word_ids.size} words on {len(servers)} server(s)",
              flush=True)
        print(f"{'sweep':>5} {'train s':>8} {'wall s':>8} {'train LL/tok':>12} "
              f"{'perplexity':>10} {'UMass':>7}", flush=True)
        for row in history:
            print(f"{row['sweep']:5d} {row['train_seconds']:8.1f} {row['wall_seconds']:8.1f} "
                  f"{row['train_ll_per_token']:12.4f} {row['heldout_perplexity']:10.1f} "
                  f"{row['umass']:7.3f}", flush=True)
        print(f"model in {out}/model.h5, top words in {out}/topics.txt, metrics in "
              f"{out}/metrics.jsonl", flush=True)

    def _write_topics(self, path: Path, word_ids: np.ndarray, word_topic: np.ndarray,
                      totals: np.ndarray) -> None:
        lc = self.lc
        tops = top_words(word_topic.T.astype(np.float64), lc.top_words)  # rows of word_ids
        names = word_ids[tops].astype(str)
        if lc.vocab:
            vocab = np.array(read_vocab(lc.vocab), dtype=object)
            if self.method == "identity":
                ids = word_ids[tops].astype(np.int64)
                names = np.where(ids < vocab.size, vocab[np.minimum(ids, vocab.size - 1)],
                                 names)
            else:
                from mpips.keys import fnv1a64
                hashed = fnv1a64(np.array([w.encode() for w in vocab], dtype="S"))
                order = np.argsort(hashed)
                at = np.searchsorted(hashed[order], word_ids[tops]).clip(0, hashed.size - 1)
                names = np.where(hashed[order][at] == word_ids[tops], vocab[order][at], names)
        with open(path, "w") as f:
            for t in range(lc.topics):
                f.write(f"topic {t:3d} ({int(totals[t])} tokens): {' '.join(names[t])}\n")

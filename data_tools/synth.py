"""Synthetic data sets with a planted model, written in chunks.

``synth ctr``: rows of ``fields`` categorical features (one id per field, so
nnz = fields per row). Field ``f`` has ``V_f`` ids, from about ``vocab**0.3``
up to ``vocab``; ids are drawn with Zipf popularity (exponent ``zipf``, by the
inverse of the continuous power-law CDF, which needs no table). Keys are
``hash_feature(id, fnv1a64("f<f>"))``. The planted model is a sparse logistic
regression: a key has a nonzero weight with probability ``density``, drawn
N(0, weight_scale**2), both derived from the key and the seed by the 64-bit
mixer, so labels need no weight table while generating. Labels are
Bernoulli(sigmoid(bias + sum of the row's weights)). The nonzero weights are
saved in ``true_model.h5`` (``keys`` sorted, ``weights``, attribute ``bias``).

``synth lda``: documents from LDA with ``topics`` topics over ``vocab`` words:
topic-word distributions ~ Dirichlet(beta), document mixtures ~
Dirichlet(alpha), lengths ~ Poisson(doc_length). Rows are documents, keys the
word ids (unhashed), values the counts. ``true_topics.h5`` holds ``topics``
(topics x vocab).

Both write shards of ``rows_per_partition`` rows; shard ``k`` draws from
``default_rng([seed, k, chunk])``, so the data do not depend on the number of
MPI ranks. Memory holds one chunk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data_tools.convert import OutputSpec, finish_dataset, prepare_output
from data_tools.errors import DataError
from mpips.data.writer import Block, PartitionSink
from mpips.keys import fnv1a64_text, hash_feature, mix64
from mpips.transport.collective import Comm

UNIT = 2.0**-53


def _uniform(keys: np.ndarray, stream: int) -> np.ndarray:
    """A uniform [0, 1) number per key, fixed by (key, stream)."""
    bits = mix64(keys ^ mix64(np.uint64(stream)))
    return (bits >> np.uint64(11)).astype(np.float64) * UNIT


class CtrModel:
    """The planted sparse logistic model, as a function of the key."""

    def __init__(self, seed: int, density: float, weight_scale: float, bias: float):
        self.streams = [(seed * 3 + k) * 0x9E37 + 1 for k in range(3)]
        self.density, self.weight_scale, self.bias = density, weight_scale, bias

    def weights(self, keys: np.ndarray) -> np.ndarray:
        out = np.zeros(keys.shape, np.float64)
        live = _uniform(keys, self.streams[0]) < self.density
        k = keys[live]
        u1 = np.maximum(_uniform(k, self.streams[1]), UNIT)
        u2 = _uniform(k, self.streams[2])
        out[live] = self.weight_scale * np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
        return out


def field_vocab(fields: int, vocab: int) -> list[int]:
    return [max(2, round(vocab ** (0.3 + 0.7 * (f + 1) / fields))) for f in range(fields)]


def zipf_ids(rng: np.random.Generator, size: int, vocab: int, a: float) -> np.ndarray:
    """Ids 0..vocab-1, P(id) roughly proportional to (id+1)**-a."""
    u = rng.random(size)
    if abs(a - 1.0) < 1e-9:
        ranks = np.exp(u * np.log(vocab + 1.0))
    else:
        top = (vocab + 1.0) ** (1 - a)
        ranks = ((top - 1.0) * u + 1.0) ** (1.0 / (1 - a))
    return np.minimum(ranks.astype(np.int64) - 1, vocab - 1).clip(0).astype(np.uint64)


def _shards(rows: int, per_shard: int, comm: Comm) -> list[tuple[int, int, int]]:
    """(shard index, first row, rows) of this rank's shards (round-robin)."""
    count = -(-rows // per_shard)
    return [(k, k * per_shard, min(per_shard, rows - k * per_shard))
            for k in range(comm.rank, count, comm.size)]


def _setup(comm: Comm, spec: OutputSpec) -> None:
    error = None
    if comm.rank == 0:
        try:
            prepare_output(spec)
        except (DataError, OSError) as e:
            error = str(e)
    error = comm.bcast_json(error)
    if error:
        raise DataError(error)


def _write_shards(comm: Comm, spec: OutputSpec, shards: list[tuple[int, int, int]],
                  hashing: dict[str, Any], make_chunk: Any, chunk_rows: int
                  ) -> dict[str, Any]:
    records, error = [], None
    sink = None
    try:
        for shard, first, count in shards:
            sink = PartitionSink(spec.folder, shard, [f"synth shard {shard}"], hashing,
                                 spec.target_rows, spec.target_bytes, spec.compression)
            for c, start in enumerate(range(0, count, chunk_rows)):
                rng = np.random.default_rng([make_chunk.seed, shard, c])
                sink.write(make_chunk(rng, first + start, min(chunk_rows, count - start)))
            records.extend(sink.finish())
            sink = None
    except (DataError, OSError, ValueError) as e:
        error = f"rank {comm.rank}: {e}"
        if sink is not None:
            sink.abort()
    return {"records": [r.as_dict() for r in records], "error": error, "skipped": 0}


class _CtrChunk:
    def __init__(self, seed: int, fields: int, vocab: int, zipf: float, model: CtrModel):
        self.seed, self.zipf, self.model = seed, zipf, model
        self.vocab = field_vocab(fields, vocab)
        self.salts = [fnv1a64_text(f"f{f}") for f in range(fields)]

    def __call__(self, rng: np.random.Generator, first_row: int, rows: int) -> Block:
        keys = np.empty((rows, len(self.vocab)), np.uint64)
        for f, (size, salt) in enumerate(zip(self.vocab, self.salts, strict=True)):
            keys[:, f] = hash_feature(zipf_ids(rng, rows, size, self.zipf), salt)
        logit = self.model.bias + self.model.weights(keys).sum(axis=1)
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        indptr = np.arange(rows + 1, dtype=np.int64) * len(self.vocab)
        return Block(labels, indptr, keys.reshape(-1), None)

    def save_model(self, path: Path, piece: int = 1 << 20) -> int:
        """All nonzero true weights, field by field, in pieces of ids."""
        keys, weights = [], []
        for size, salt in zip(self.vocab, self.salts, strict=True):
            for lo in range(0, size, piece):
                k = hash_feature(np.arange(lo, min(size, lo + piece), dtype=np.uint64), salt)
                w = self.model.weights(k)
                keys.append(k[w != 0])
                weights.append(w[w != 0])
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys)
        temp = path.with_name(f".{path.name}.tmp")
        with h5py.File(temp, "w") as h5:
            h5.create_dataset("keys", data=all_keys[order], track_times=False)
            h5.create_dataset("weights", data=np.concatenate(weights)[order].astype(np.float32),
                              track_times=False)
            h5.attrs["bias"] = self.model.bias
            h5.attrs["note"] = "planted logistic model: P(y=1) = sigmoid(bias + sum w[key])"
        temp.replace(path)
        return int(all_keys.size)


def synth_ctr(spec: OutputSpec, rows: int, fields: int, vocab: int, zipf: float,
              density: float, weight_scale: float, bias: float, seed: int, chunk_rows: int,
              comm: Comm | None = None) -> dict[str, Any] | None:
    """Write a CTR-like data set; returns a summary on rank 0."""
    comm = comm or Comm()
    if rows < 1 or fields < 1 or vocab < 2 or not 0 <= density <= 1 or chunk_rows < 1:
        raise DataError("synth ctr needs rows >= 1, fields >= 1, vocab >= 2, "
                        "0 <= density <= 1, chunk_rows >= 1")
    started = time.perf_counter()
    _setup(comm, spec)
    maker = _CtrChunk(seed, fields, vocab, zipf, CtrModel(seed, density, weight_scale, bias))
    hashing = {"method": "mpips.keys.hash_feature",
               "note": "key = hash_feature(id, fnv1a64('f<field>')), ids Zipf-distributed"}
    per_shard = min(spec.target_rows, max(1, spec.target_bytes // (12 + 8 * fields)))
    result = _write_shards(comm, spec, _shards(rows, per_shard, comm), hashing, maker,
                           chunk_rows)
    params = {"kind": "ctr", "rows": rows, "fields": fields, "vocab": vocab, "zipf": zipf,
              "density": density, "weight_scale": weight_scale, "bias": bias, "seed": seed,
              "field_vocab": maker.vocab}
    meta = {"created_by": "data_tools synth ctr", "input_format": "synth", "labels": "binary",
            "hashing": hashing, "inputs": [], "generator": params,
            "true_model": "true_model.h5"}
    if comm.rank == 0 and result["error"] is None:
        try:
            params["true_nonzeros"] = maker.save_model(Path(spec.folder) / "true_model.h5")
        except OSError as e:
            result["error"] = f"cannot write true_model.h5: {e}"
    manifest = finish_dataset(comm, spec, result, meta)
    if comm.rank != 0:
        return None
    return {"rows": manifest["rows"], "nnz": manifest["nnz"],
            "label_rate": round(manifest["label_rate"], 4),
            "partitions": len(manifest["partitions"]),
            "seconds": round(time.perf_counter() - started, 1), "ranks": comm.size}


class _LdaChunk:
    def __init__(self, seed: int, topics: np.ndarray, alpha: float, doc_length: float):
        self.seed, self.topics, self.alpha, self.doc_length = seed, topics, alpha, doc_length
        k, v = topics.shape
        # Cumulative topic-word rows, offset by the topic index so one
        # searchsorted draws words for tokens of any topic.
        self.word_cdf = (np.cumsum(topics, axis=1) + np.arange(k)[:, None]).reshape(-1)
        self.word_cdf[np.arange(1, k + 1) * v - 1] = np.arange(1, k + 1)  # exact row ends

    def __call__(self, rng: np.random.Generator, first_row: int, rows: int) -> Block:
        k, v = self.topics.shape
        theta = rng.dirichlet(np.full(k, self.alpha), size=rows)
        lengths = np.maximum(rng.poisson(self.doc_length, rows), 1)
        doc = np.repeat(np.arange(rows), lengths)
        topic_cdf = (np.cumsum(theta, axis=1) + np.arange(rows)[:, None]).reshape(-1)
        topic_cdf[np.arange(1, rows + 1) * k - 1] = np.arange(1, rows + 1)
        z = np.searchsorted(topic_cdf, doc + rng.random(doc.size), side="right") - doc * k
        z = np.minimum(z, k - 1)
        word = np.searchsorted(self.word_cdf, z + rng.random(doc.size), side="right") - z * v
        word = np.minimum(word, v - 1)
        pair, counts = np.unique(doc * v + word, return_counts=True)
        indptr = np.zeros(rows + 1, np.int64)
        np.cumsum(np.bincount(pair // v, minlength=rows), out=indptr[1:])
        return Block(np.zeros(rows, np.float32), indptr, (pair % v).astype(np.uint64),
                     counts.astype(np.float32))


def synth_lda(spec: OutputSpec, docs: int, vocab: int, topics: int, doc_length: float,
              alpha: float, beta: float, seed: int, chunk_rows: int,
              comm: Comm | None = None) -> dict[str, Any] | None:
    """Write a planted-topic corpus; returns a summary on rank 0."""
    comm = comm or Comm()
    if docs < 1 or vocab < 2 or topics < 1 or alpha <= 0 or beta <= 0 or chunk_rows < 1:
        raise DataError("synth lda needs docs >= 1, vocab >= 2, topics >= 1, alpha > 0, "
                        "beta > 0, chunk_rows >= 1")
    started = time.perf_counter()
    _setup(comm, spec)
    phi = np.random.default_rng([seed, 2**31]).dirichlet(np.full(vocab, beta), size=topics)
    maker = _LdaChunk(seed, phi, alpha, doc_length)
    hashing = {"method": "identity", "note": "keys are word ids 0..vocab-1; values are counts"}
    result = _write_shards(comm, spec, _shards(docs, spec.target_rows, comm), hashing, maker,
                           chunk_rows)
    params = {"kind": "lda", "docs": docs, "vocab": vocab, "topics": topics,
              "doc_length": doc_length, "alpha": alpha, "beta": beta, "seed": seed}
    meta = {"created_by": "data_tools synth lda", "input_format": "synth", "labels": "none",
            "hashing": hashing, "inputs": [], "generator": params,
            "true_topics": "true_topics.h5"}
    if comm.rank == 0 and result["error"] is None:
        temp = Path(spec.folder) / ".true_topics.h5.tmp"
        with h5py.File(temp, "w") as h5:
            h5.create_dataset("topics", data=phi.astype(np.float32), track_times=False)
            h5.attrs["alpha"], h5.attrs["beta"] = alpha, beta
        temp.replace(Path(spec.folder) / "true_topics.h5")
    manifest = finish_dataset(comm, spec, result, meta)
    if comm.rank != 0:
        return None
    return {"docs": manifest["rows"], "nnz": manifest["nnz"],
            "partitions": len(manifest["partitions"]),
            "seconds": round(time.perf_counter() - started, 1), "ranks": comm.size}

"""LDA numerics shared by the app and the benchmark: no MPI, no kv, numpy only.

- :class:`GibbsBlocks`: a worker's documents as token arrays cut into blocks,
  and the vectorised collapsed Gibbs step over one block;
- the held-out split and document completion (:func:`completion_loglik`), the
  one perplexity definition used for every model compared;
- UMass coherence from document (co-)frequencies of each topic's top words;
- ``word_key``/``key_word``: word ids <-> kv keys (mix64 and its inverse).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...keys import mix64

# scipy.sparse is imported where a matrix is made, so that the ranks that
# never make one (the scheduler, the servers) start without importing it.
if TYPE_CHECKING:
    import scipy.sparse as sp

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1_INV = np.uint64(pow(0xBF58476D1CE4E5B9, -1, 2**64))
_M2_INV = np.uint64(pow(0x94D049BB133111EB, -1, 2**64))
# The totals row lives in the word-topic table under the key of this id; data
# keys never reach it (word ids and fnv1a64 hashes checked on load).
TOTALS_ID = np.uint64(2**64 - 1)


def word_key(words: np.ndarray) -> np.ndarray:
    """kv keys of word ids: mix64 spreads contiguous ids over the ring's ranges."""
    return mix64(np.asarray(words, np.uint64))


def key_word(keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`word_key` (undo each xor-shift and multiply of mix64)."""
    z = np.asarray(keys, np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= (z >> np.uint64(31)) ^ (z >> np.uint64(62))
        z *= _M2_INV
        z ^= (z >> np.uint64(27)) ^ (z >> np.uint64(54))
        z *= _M1_INV
        z ^= (z >> np.uint64(30)) ^ (z >> np.uint64(60))
        return z - _GOLDEN


TOTALS_KEY = word_key(TOTALS_ID)


# ---- documents ------------------------------------------------------------------------
def check_counts(indptr: np.ndarray, words: np.ndarray, counts: np.ndarray | None,
                 vocab_size: int | None, where: str) -> np.ndarray:
    """Counts as int64, refusing what LDA cannot use; errors name ``where``."""
    if counts is None:
        counts = np.ones(words.size, np.int64)
    bad = ~(np.isfinite(counts) & (counts >= 1) & (counts == np.floor(counts)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        doc = int(np.searchsorted(indptr, i, side="right") - 1)
        raise ValueError(f"{where}: document {doc}: count {counts[i]:g} of word {int(words[i])} "
                         "is not a positive integer (LDA needs word counts)")
    if words.size and words.max() == TOTALS_ID:
        raise ValueError(f"{where}: word key {int(TOTALS_ID)} is reserved for topic totals")
    if vocab_size is not None and words.size and words.max() >= vocab_size:
        i = int(np.argmax(words))
        doc = int(np.searchsorted(indptr, i, side="right") - 1)
        raise ValueError(f"{where}: document {doc}: word id {int(words[i])} is beyond the "
                         f"vocabulary (size {vocab_size}: ids 0..{vocab_size - 1})")
    return counts.astype(np.int64)


def heldout_mask(global_rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Documents held out for evaluation: a fixed function of the global row number."""
    u = (mix64(np.asarray(global_rows, np.uint64) ^ mix64(np.uint64(seed + 0x5EED)))
         >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u < fraction


def tokens_of(indptr: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(doc of each token, nonzero of each token): counts expanded to single tokens."""
    nnz_doc = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
    nz = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    return nnz_doc[nz], nz


def completion_split(indptr: np.ndarray, words: np.ndarray, counts: np.ndarray
                     ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Document completion: each held-out document's tokens, in order, alternate
    between the observed half (even positions) and the evaluated half (odd).
    Returns two CSR count matrices over the same columns as ``words`` (word ids)."""
    doc, nz = tokens_of(indptr, counts)
    starts = np.repeat(np.concatenate([[0], np.cumsum(np.bincount(doc, minlength=indptr.size
                                                                   - 1))[:-1]]),
                       np.bincount(doc, minlength=indptr.size - 1))
    odd = ((np.arange(doc.size) - starts) & 1).astype(bool)
    ndoc = indptr.size - 1
    width = int(words.max()) + 1 if words.size else 1
    w = words[nz].astype(np.int64)
    import scipy.sparse as sp
    obs = sp.csr_matrix((np.ones((~odd).sum()), (doc[~odd], w[~odd])), shape=(ndoc, width))
    ev = sp.csr_matrix((np.ones(odd.sum()), (doc[odd], w[odd])), shape=(ndoc, width))
    obs.sum_duplicates()
    ev.sum_duplicates()
    return obs, ev


def completion_loglik(phi: np.ndarray, observed: sp.csr_matrix, evaluated: sp.csr_matrix,
                      alpha: float, iters: int = 50) -> tuple[float, int]:
    """Log-likelihood of the evaluated tokens given the observed ones.

    ``phi`` (words x topics) holds p(word | topic) for the matrices' columns.
    theta_d is fitted to the observed half by EM with phi fixed (the MAP
    estimate under Dirichlet(alpha), vectorised over all documents), then
    ``sum log sum_k theta_dk phi_wk`` over the evaluated tokens. Every model
    compared goes through this same function. Returns (log-lik sum, tokens).
    """
    phi = np.asarray(phi, np.float64)
    k = phi.shape[1]
    obs = observed.tocoo()
    d, w, c = obs.row, obs.col, obs.data
    theta = np.full((observed.shape[0], k), 1.0 / k)
    for _ in range(iters):
        mix = theta[d] * phi[w]
        mix *= (c / np.maximum(mix.sum(axis=1), 1e-300))[:, None]
        nk = np.zeros_like(theta)
        _row_sums(nk, d, mix)
        theta = nk + alpha  # the posterior mean of theta given the soft counts
        theta /= theta.sum(axis=1, keepdims=True)
    ev = evaluated.tocoo()
    p = (theta[ev.row] * phi[ev.col]).sum(axis=1)
    return float((ev.data * np.log(np.maximum(p, 1e-300))).sum()), int(ev.data.sum())


def _row_sums(out: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> None:
    """out[rows[i]] += vals[i] for sorted or unsorted rows, without np.add.at."""
    import scipy.sparse as sp
    m = sp.csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))),
                      shape=(out.shape[0], rows.size))
    out += m @ vals


# ---- coherence ---------------------------------------------------------------------------
def top_words(topic_word: np.ndarray, n: int) -> np.ndarray:
    """(topics, n) word ids of the largest entries of each row, largest first."""
    n = min(n, topic_word.shape[1])
    part = np.argpartition(-topic_word, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(topic_word, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def cooccurrence(binary_docs: sp.csr_matrix, tops: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Document frequencies (topics, n) and co-document frequencies (topics, n, n)
    of each topic's top words in ``binary_docs`` (docs x words, nonzero = present).
    Sums over disjoint document sets add up, so workers can compute their share."""
    k, n = tops.shape
    cols = binary_docs[:, tops.reshape(-1)]
    cols.data[:] = 1.0
    gram = (cols.T @ cols).toarray()
    idx = np.arange(k)[:, None] * n + np.arange(n)[None, :]
    co = gram[idx[:, :, None], idx[:, None, :]]
    return np.diagonal(co, axis1=1, axis2=2).copy(), co


def umass(doc_freq: np.ndarray, co_freq: np.ndarray) -> np.ndarray:
    """UMass coherence per topic (Mimno et al. 2011): mean over word pairs i < j
    of log((D(w_i, w_j) + 1) / D(w_i)), w_i ranked above w_j."""
    k, n = doc_freq.shape
    i, j = np.triu_indices(n, 1)
    score = np.log((co_freq[:, i, j] + 1.0) / np.maximum(doc_freq[:, i], 1.0))
    return score.mean(axis=1)


# ---- the sampler ---------------------------------------------------------------------------
class GibbsBlocks:
    """One worker's training tokens, cut into blocks of whole documents.

    Tokens are stored block by block; inside a block they are grouped by
    *phase* (their position in the document modulo ``phases``), so a block is
    sampled as ``phases`` vectorised steps: word-topic counts are stale within
    the block (AD-LDA), document-topic counts only within a phase.
    """

    def __init__(self, indptr: np.ndarray, words: np.ndarray, counts: np.ndarray, topics: int,
                 block_tokens: int, phases: int, rng: np.random.Generator):
        self.topics = topics
        self.vocab, word_index = np.unique(words, return_inverse=True)  # local vocabulary
        doc, nz = tokens_of(indptr, counts)
        self.num_docs = indptr.size - 1
        self.num_tokens = int(doc.size)
        tok_per_doc = np.bincount(doc, minlength=self.num_docs)
        # Blocks: runs of whole documents with about block_tokens tokens.
        cum = np.concatenate([[0], np.cumsum(tok_per_doc)])
        cuts = np.searchsorted(cum, np.arange(block_tokens, cum[-1], block_tokens))
        doc_cuts = np.unique(np.concatenate([[0], cuts, [self.num_docs]]))
        self.block_docs = list(zip(doc_cuts[:-1], doc_cuts[1:], strict=True))
        position = np.arange(doc.size) - cum[doc]
        phase = position % phases
        block_of = np.searchsorted(doc_cuts, doc, side="right") - 1
        order = np.lexsort((phase, block_of))  # by block, then phase
        self.doc = doc[order].astype(np.int32)
        self.word = word_index[nz][order].astype(np.int32)
        self.z = rng.integers(0, topics, doc.size).astype(np.int32)
        key = block_of[order] * phases + phase[order]
        bounds = np.searchsorted(key, np.arange(len(self.block_docs) * phases + 1))
        self.block_tok = [(int(bounds[b * phases]), int(bounds[(b + 1) * phases]))
                          for b in range(len(self.block_docs))]
        self.phase_bounds = [bounds[b * phases:(b + 1) * phases + 1]
                             for b in range(len(self.block_docs))]
        # Each block's words: local-vocab indices (sorted) and tokens' positions in them.
        self.block_words: list[np.ndarray] = []
        self.block_word_pos: list[np.ndarray] = []
        for a, b in self.block_tok:
            uniq, pos = np.unique(self.word[a:b], return_inverse=True)
            self.block_words.append(uniq.astype(np.int64))
            self.block_word_pos.append(pos.astype(np.int32))
        self.ndk = np.bincount(self.doc.astype(np.int64) * topics + self.z,
                               minlength=self.num_docs * topics
                               ).reshape(self.num_docs, topics).astype(np.int32)
        self.doc_len = tok_per_doc.astype(np.float64)

    def word_topic(self) -> np.ndarray:
        """(local vocab, topics) counts of this worker's current assignments."""
        out = np.bincount(self.word.astype(np.int64) * self.topics + self.z,
                          minlength=self.vocab.size * self.topics)
        return out.reshape(self.vocab.size, self.topics).astype(np.int32)

    def sample_block(self, b: int, nwk: np.ndarray, nk: np.ndarray, alpha: float,
                     beta: float, vocab_size: int, rng: np.random.Generator,
                     want_loglik: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
        """Resample block ``b``'s tokens given its words' counts ``nwk`` (rows of
        ``block_words[b]``, changed in place) and topic totals ``nk`` (changed in
        place). Returns (word-topic delta, topic-total delta, log-lik sum)."""
        k = self.topics
        d0, d1 = self.block_docs[b]
        ndk = self.ndk[d0:d1]
        a0 = self.block_tok[b][0]
        bounds = self.phase_bounds[b]
        vbeta = vocab_size * beta
        nwk_start = nwk.copy()
        loglik = 0.0
        for p in range(bounds.size - 1):
            a, e = int(bounds[p]), int(bounds[p + 1])
            if a == e:
                continue
            doc = self.doc[a:e] - d0
            wpos = self.block_word_pos[b][a - a0:e - a0]
            z_old = self.z[a:e]
            phi = (nwk.astype(np.float32) + np.float32(beta)) / (nk.astype(np.float32)
                                                                  + np.float32(vbeta))
            prob = ndk[doc].astype(np.float32)
            prob += np.float32(alpha)
            prob *= phi[wpos]
            if want_loglik:
                total = prob.sum(axis=1, dtype=np.float64)
                loglik += float(np.log(total / (self.doc_len[doc + d0] + k * alpha)).sum())
            # Take the token's own assignment out of the counts it is sampled from.
            rows = np.arange(e - a)
            own_n = np.maximum(nwk[wpos, z_old] - 1, 0).astype(np.float32)
            prob[rows, z_old] = ((ndk[doc, z_old] - 1 + alpha) * (own_n + beta)
                                 / (np.maximum(nk[z_old] - 1, 0) + vbeta))
            np.cumsum(prob, axis=1, out=prob)
            u = rng.random(e - a, dtype=np.float32) * prob[:, -1]
            z_new = (prob < u[:, None]).sum(axis=1, dtype=np.int32)
            np.minimum(z_new, k - 1, out=z_new)
            moved = z_new != z_old
            if moved.any():
                dm, wm, zo, zn = doc[moved], wpos[moved], z_old[moved], z_new[moved]
                size = ndk.size
                ndk += (np.bincount(dm * k + zn, minlength=size)
                        - np.bincount(dm * k + zo, minlength=size)).reshape(ndk.shape
                                                                            ).astype(np.int32)
                wsize = nwk.size
                nwk += (np.bincount(wm.astype(np.int64) * k + zn, minlength=wsize)
                        - np.bincount(wm.astype(np.int64) * k + zo, minlength=wsize)
                        ).reshape(nwk.shape).astype(nwk.dtype)
                nk += (np.bincount(zn, minlength=k) - np.bincount(zo, minlength=k)
                       ).astype(nk.dtype)
                self.z[a:e] = z_new
        delta = nwk - nwk_start
        return delta, delta.sum(axis=0), loglik

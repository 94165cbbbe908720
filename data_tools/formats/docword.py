"""Bag-of-words documents for topic models: UCI docword and tokenised text.

``uci-docword`` (the UCI "Bag of Words" data sets): three header lines (number
of documents D, vocabulary size W, number of nonzeros), then ``doc word count``
lines, 1-based, sorted by document. Row ``d - 1`` of the output is document
``d`` (documents without lines become empty rows, so row numbers stay document
ids); keys are the 0-based word ids ``word - 1``, i.e. the line of the word in
the matching ``vocab.*.txt``; values are the counts. A document may span any
number of read chunks: its lines are carried into the next chunk.

``tokens``: one document per line, whitespace-separated tokens. Keys are
``fnv1a64`` of the token's UTF-8 bytes (:mod:`mpips.keys`), so a vocab
file maps back by hashing its words; with ``--keep-ids`` the tokens are
non-negative integer word ids, stored as they are. Values are the counts of the
key in the document (repeated tokens are summed); an empty line is an empty
document.

Both record ``hashing`` with ``method`` ("identity" or "fnv1a64") and, for
docword, ``vocab_size`` W: the LDA app reads it to size its prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from data_tools.errors import BadLine, DataError
from data_tools.formats.base import Block, InputFormat, register
from data_tools.sources import TextChunk, read_chunks
from mpips.keys import fnv1a64

HEADER_LINES = 3


def _int_tokens(data: bytes) -> np.ndarray | None:
    """Every whitespace-separated token as int64, or None if one is not an integer."""
    tokens = data.split()
    if not tokens:
        return np.zeros(0, np.int64)
    try:
        return np.array(tokens).astype(np.int64)
    except (ValueError, OverflowError):
        return None


def _aggregate(doc: np.ndarray, keys: np.ndarray, counts: np.ndarray, rows: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the counts of repeated (doc, key) pairs; CSR sorted by doc then key."""
    order = np.lexsort((keys, doc))
    doc, keys, counts = doc[order], keys[order], counts[order]
    first = np.ones(doc.size, bool)
    first[1:] = (doc[1:] != doc[:-1]) | (keys[1:] != keys[:-1])
    starts = np.flatnonzero(first)
    summed = np.add.reduceat(counts, starts) if starts.size else counts[:0]
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(np.bincount(doc[starts], minlength=rows), out=indptr[1:])
    return indptr, keys[starts], summed


@register
class UciDocword(InputFormat):
    name = "uci-docword"
    help = "UCI bag of words: header D, W, NNZ; then 'doc word count' (1-based, by doc)"

    def __init__(self, options, budget):
        super().__init__(options, budget)
        self.vocab_size: int | None = None

    def hashing(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": "identity", "note": "keys are 0-based word ids "
                               "(UCI word id - 1, the line of the word in the vocab file); "
                               "values are counts"}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        return out

    def blocks(self, path: str) -> Iterator[Block]:
        header: list[int] = []
        docs = 0
        next_doc = 1  # the first document id not yet written
        carry = np.zeros((0, 3), np.int64)  # lines of the last, maybe unfinished, document
        carry_line = 0
        for chunk in read_chunks(path, self.options.chunk_bytes,
                                 self.options.max_line_bytes):
            data, first_line = chunk.data, chunk.first_line
            while len(header) < HEADER_LINES and data:
                line, _, data = data.partition(b"\n")
                first_line += 1
                if not line.strip():
                    continue
                try:
                    header.append(int(line))
                except ValueError:
                    raise DataError(f"{path}:{first_line - 1}: header line {len(header) + 1} "
                                    f"should be one integer (D, W, NNZ), got "
                                    f"{line[:40].decode(errors='replace')!r}") from None
                if len(header) == HEADER_LINES:
                    docs, self.vocab_size = header[0], header[1]
                    if docs < 0 or self.vocab_size < 1:
                        raise DataError(f"{path}: header says {docs} documents and "
                                        f"{self.vocab_size} words")
            if len(header) < HEADER_LINES:
                continue
            triples, lines = self._parse(TextChunk(data, first_line, path), docs)
            if not triples.size:
                continue
            if carry.size:
                triples = np.concatenate([carry, triples])
                lines = np.concatenate([np.arange(carry_line, carry_line + carry.shape[0]),
                                        lines])
            self._check_order(triples[:, 0], lines, path, next_doc)
            # Keep the last document's lines: it may go on in the next chunk.
            last = triples[-1, 0]
            cut = int(np.searchsorted(triples[:, 0], last))
            carry, carry_line = triples[cut:], int(lines[cut]) if cut < lines.size else 0
            if cut:
                block = self._block(triples[:cut], next_doc, int(last))
                next_doc = int(last)
                yield block
        if len(header) < HEADER_LINES:
            raise DataError(f"{path}: missing the 3 header lines (documents, words, nonzeros)")
        if carry.size:
            self._check_order(carry[:, 0], np.arange(carry.shape[0]) + carry_line, path,
                              next_doc)
        end = max(docs + 1, int(carry[-1, 0]) + 1 if carry.size else next_doc)
        if end > next_doc:
            yield self._block(carry, next_doc, end)

    def _parse(self, chunk: TextChunk, docs: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) int64 triples of the chunk's good lines and their line numbers."""
        lines = chunk.data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        numbers = _int_tokens(chunk.data)
        line_no = np.arange(chunk.first_line, chunk.first_line + len(lines))
        if numbers is None or numbers.size != 3 * len(lines):
            return self._parse_slow(lines, line_no, chunk.source, docs)
        triples = numbers.reshape(-1, 3)
        bad = self._problems(triples, docs)
        if bad.any():
            for i in np.flatnonzero(bad):
                self.budget.skip(BadLine(chunk.source, int(line_no[i]),
                                         self._reason(triples[i], docs)))
            triples, line_no = triples[~bad], line_no[~bad]
        return triples, line_no

    def _parse_slow(self, lines: list[bytes], line_no: np.ndarray, source: str, docs: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        good, good_lines = [], []
        for raw, n in zip(lines, line_no, strict=True):
            parts = raw.split()
            if not parts:
                continue
            reason = None
            if len(parts) != 3:
                reason = f"expected 'doc word count', got {len(parts)} fields"
            else:
                try:
                    triple = np.array([int(p) for p in parts], np.int64)
                except (ValueError, OverflowError):
                    reason = (f"'{raw.decode(errors='replace')[:60]}' is not three integers")
                else:
                    reason = self._reason(triple, docs)
            if reason:
                self.budget.skip(BadLine(source, int(n), reason))
                continue
            good.append(triple)
            good_lines.append(int(n))
        if not good:
            return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
        return np.stack(good), np.array(good_lines, np.int64)

    def _problems(self, triples: np.ndarray, docs: int) -> np.ndarray:
        assert self.vocab_size is not None
        d, w, c = triples[:, 0], triples[:, 1], triples[:, 2]
        return (d < 1) | (d > docs) | (w < 1) | (w > self.vocab_size) | (c < 1)

    def _reason(self, triple: np.ndarray, docs: int) -> str | None:
        d, w, c = (int(x) for x in triple)
        if not 1 <= d <= docs:
            return f"document id {d} is outside 1..{docs} (the header's document count)"
        if not 1 <= w <= (self.vocab_size or 0):
            return f"word id {w} is outside 1..{self.vocab_size} (the header's vocabulary size)"
        if c < 1:
            return f"count {c} of word {w} in document {d} must be a positive integer"
        return None

    @staticmethod
    def _check_order(doc: np.ndarray, lines: np.ndarray, path: str, next_doc: int) -> None:
        back = np.flatnonzero(np.diff(doc) < 0)
        if back.size or (doc.size and doc[0] < next_doc):
            i = int(back[0]) + 1 if back.size else 0
            raise DataError(f"{path}:{int(lines[i])}: document {int(doc[i])} comes after "
                            "a later document; uci-docword lines must be sorted by document")

    @staticmethod
    def _block(triples: np.ndarray, first_doc: int, end_doc: int) -> Block:
        """Rows for documents first_doc .. end_doc-1 (empty rows for absent ones)."""
        rows = end_doc - first_doc
        indptr, words, counts = _aggregate(triples[:, 0] - first_doc,
                                           (triples[:, 1] - 1).astype(np.uint64),
                                           triples[:, 2], rows)
        return Block(np.zeros(rows, np.float32), indptr, words, counts.astype(np.float32))


@register
class Tokens(InputFormat):
    name = "tokens"
    help = "tokenised text, one document per line; keys fnv1a64(token) or ids (--keep-ids)"

    def hashing(self) -> dict[str, Any]:
        if self.options.keep_ids:
            return {"method": "identity", "note": "keys are the integer word ids of the "
                    "tokens; values are counts"}
        return {"method": "fnv1a64", "note": "key = fnv1a64(UTF-8 bytes of the token) "
                "(mpips.keys); values are counts"}

    def blocks(self, path: str) -> Iterator[Block]:
        for chunk in read_chunks(path, self.options.chunk_bytes,
                                 self.options.max_line_bytes):
            block = self._parse(chunk)
            if block.rows:
                yield block

    def _parse(self, chunk: TextChunk) -> Block:
        lines = chunk.data.split(b"\n")[:-1]
        rows = len(lines)
        per_line = [line.split() for line in lines]  # one C-level split per document
        lengths = np.fromiter((len(t) for t in per_line), np.int64, rows)
        tokens = [t for line in per_line for t in line]
        doc = np.repeat(np.arange(rows, dtype=np.int64), lengths)
        if not tokens:
            return Block(np.zeros(rows, np.float32), np.zeros(rows + 1, np.int64),
                         np.zeros(0, np.uint64), np.zeros(0, np.float32))
        if self.options.keep_ids:
            keys, kept = self._ids(np.array(tokens), doc, chunk)
            doc = doc[kept]
        else:
            keys = fnv1a64(np.array(tokens))
        indptr, keys, counts = _aggregate(doc, keys, np.ones(keys.size, np.int64), rows)
        return Block(np.zeros(rows, np.float32), indptr, keys, counts.astype(np.float32))

    def _ids(self, tokens: np.ndarray, doc: np.ndarray, chunk: TextChunk
             ) -> tuple[np.ndarray, np.ndarray]:
        """Integer word ids of the good tokens, and the mask of good tokens."""
        try:
            ids = tokens.astype(np.int64)
            bad = ids < 0
        except (ValueError, OverflowError):
            ids = np.zeros(tokens.size, np.int64)
            bad = np.zeros(tokens.size, bool)
            for i, t in enumerate(tokens.tolist()):  # only on a chunk with a bad token
                try:
                    ids[i] = int(t)
                    bad[i] = ids[i] < 0
                except (ValueError, OverflowError):
                    bad[i] = True
        for i in np.flatnonzero(bad):
            self.budget.skip(BadLine(chunk.source, chunk.first_line + int(doc[i]),
                                     f"token {tokens[i].decode(errors='replace')!r} is not "
                                     "a non-negative integer word id (--keep-ids)"))
        return ids[~bad].astype(np.uint64), ~bad

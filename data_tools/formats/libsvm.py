"""libsvm / svmlight text: ``label id:value id:value ... [# comment]``.

Labels -1/+1 or 0/1 (stored 0/1) or, with ``--labels real``, any number. A
feature without ``:value`` has value 1. ``qid:N`` tokens and ``#`` comments are
ignored; blank lines are skipped. Ids are non-negative integers; keys are
``hash_feature(id, salt)`` (:mod:`mpips.ring`), or the ids themselves with
``--keep-ids``.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from data_tools.formats.base import Block, LineError, TextFormat, register
from data_tools.numparse import COLON, NEWLINE, SPACE, parse_decimals, token_bounds
from data_tools.sources import TextChunk
from mpips.keys import hash_feature

_TO_SPACE = bytes.maketrans(b"\t\r\v\f", b"    ")
_QID = re.compile(rb"(?<![^\s])qid:\S*")
_COMMENT = re.compile(rb"#[^\n]*")
MAX_EXACT_ID = 2**53  # ids travel through float64 in the general path


@register
class LibSVM(TextFormat):
    name = "libsvm"
    help = "libsvm/svmlight text: label id[:value] ... (qid and # comments ignored)"

    def hashing(self) -> dict[str, Any]:
        if self.options.keep_ids:
            return {"method": "identity", "note": "keys are the integer feature ids"}
        return {"method": "mpips.keys.hash_feature", "salt": self.options.salt,
                "note": "key = hash_feature(id, salt): SplitMix64 finaliser of id ^ mix64(salt)"}

    def keys(self, ids: np.ndarray) -> np.ndarray:
        ids = ids.astype(np.uint64)
        return ids if self.options.keep_ids else hash_feature(ids, self.options.salt)

    # -- vectorised path ---------------------------------------------------
    def parse_fast(self, chunk: TextChunk) -> Block | None:
        text = chunk.data.translate(_TO_SPACE)
        if b"#" in text:
            text = _COMMENT.sub(b"", text)
        if b"qid:" in text:
            text = _QID.sub(b"", text)
        buf = np.frombuffer(text, np.uint8)
        newline = buf == NEWLINE
        colon = buf == COLON
        sep = (buf == SPACE) | newline | colon
        tok = token_bounds(buf, sep)
        if tok.starts.size == 0:
            return None
        parsed = parse_decimals(buf, sep, tok)
        numbers = parsed[0] if parsed is not None else _general_numbers(text)
        if numbers is None or numbers.size != tok.starts.size:
            return None
        line_of = np.searchsorted(np.flatnonzero(newline), tok.starts)
        is_label = np.ones(tok.starts.size, bool)
        is_label[1:] = line_of[1:] != line_of[:-1]
        is_value = np.zeros(tok.starts.size, bool)
        is_value[1:] = buf[tok.starts[1:] - 1] == COLON
        is_id = ~(is_label | is_value)
        # A colon joins an id and a value: "id:value" with nothing in between.
        colon_pos = np.flatnonzero(colon)
        if colon_pos.size != np.count_nonzero(is_value):
            return None
        value_at = np.flatnonzero(is_value)
        if not is_id[value_at - 1].all() or not (tok.ends[value_at - 1] == colon_pos).all():
            return None
        labels = self.check_labels(numbers[is_label])
        if labels is None:
            return None
        id_at = np.flatnonzero(is_id)
        ids = numbers[id_at]
        if ids.size and (ids.min() < 0 or ids.max() >= MAX_EXACT_ID
                         or (ids != np.floor(ids)).any()):
            return None
        has_value = np.zeros(id_at.size, bool)
        inside = id_at + 1 < numbers.size
        has_value[inside] = is_value[id_at[inside] + 1]
        values = np.ones(id_at.size, np.float64)
        values[has_value] = numbers[id_at[has_value] + 1]
        if not np.isfinite(values).all():
            return None
        row_of_id = np.cumsum(is_label)[id_at] - 1
        indptr = np.zeros(labels.size + 1, np.int64)
        np.cumsum(np.bincount(row_of_id, minlength=labels.size), out=indptr[1:])
        with np.errstate(over="ignore"):  # past float32: parse_chunk sends it to parse_line
            values32 = values.astype(np.float32)
        return Block(labels, indptr, self.keys(ids),
                     None if (values32 == 1).all() else values32)

    # -- per-line path: the authority on errors ----------------------------
    def parse_line(self, line: bytes) -> tuple[float, np.ndarray, np.ndarray] | None:
        tokens = line.split(b"#", 1)[0].split()
        if not tokens:
            return None
        label = _number(tokens[0], "label")
        problem = self.label_problem(label)
        if problem:
            raise LineError(problem)
        ids, values = [], []
        for token in tokens[1:]:
            if token.startswith(b"qid:"):
                continue
            name, colon, raw = token.partition(b":")
            fid = _number(name, "feature id", token)
            if fid < 0 or fid != int(fid):
                raise LineError(f"feature id in {_shown(token)!r} is not a non-negative "
                                "integer")
            if fid >= MAX_EXACT_ID:
                raise LineError(f"feature id in {_shown(token)!r} is 2^53 or more: libsvm "
                                "ids must be below 2^53 (they are read as float64)")
            value = _number(raw, "value", token) if colon else 1.0
            if not np.isfinite(value):
                raise LineError(f"value in {_shown(token)!r} is not finite")
            ids.append(int(fid))
            values.append(value)
        return label, self.keys(np.array(ids, np.uint64)), np.array(values, np.float64)


def _shown(token: bytes, limit: int = 40) -> str:
    """A token as an error message shows it: decoded, and cut if long
    (binary data makes long tokens)."""
    text = token[: limit + 1].decode(errors="replace")
    return text if len(token) <= limit else text[:limit] + "..."


def _number(raw: bytes, what: str, token: bytes | None = None) -> float:
    shown = _shown(token if token is not None else raw)
    if b":" in raw or not raw:
        raise LineError(f"malformed token {shown!r}")
    try:
        return float(raw)
    except ValueError:
        raise LineError(f"{what} in {shown!r} is not a number") from None


def _general_numbers(text: bytes) -> np.ndarray | None:
    """All numbers of a chunk through numpy's string-to-float cast (exponents,
    more than 18 digits); None if some token is not a number."""
    tokens = text.replace(b":", b" ").split()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array(tokens).astype(np.float64)
    except ValueError:
        return None

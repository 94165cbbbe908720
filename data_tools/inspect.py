"""``inspect`` (what is in a data set) and ``verify`` (is it intact)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.errors import DataError
from mpips.data.manifest import ManifestError, load_manifest
from mpips.data.reader import PartitionError, PartitionReader
from mpips.data.verify import check_partition

VERIFY_PIECE_ROWS = 1 << 18


def _load(folder: str):  # -> Manifest
    try:
        return load_manifest(folder)
    except ManifestError as e:
        raise DataError(str(e)) from None


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"min": float(arr.min()), "median": float(np.median(arr)), "max": float(arr.max())}


def summarise(folder: str, sample_nnz: int = 10_000_000) -> dict[str, Any]:
    """Totals from the manifest; nonzeros per row from every partition's indptr;
    key statistics from the first ``sample_nnz`` keys."""
    manifest = _load(folder)
    parts = manifest.partitions
    per_row_min, per_row_max = np.inf, 0
    sample: list[np.ndarray] = []
    budget = sample_nnz
    try:
        for part in parts:
            with PartitionReader(part.path) as reader:
                for chunk in reader.chunks():
                    lengths = np.diff(chunk.indptr)
                    if lengths.size:
                        per_row_min = min(per_row_min, int(lengths.min()))
                        per_row_max = max(per_row_max, int(lengths.max()))
                    if budget > 0:
                        sample.append(chunk.keys[:budget])
                        budget -= sample[-1].size
    except PartitionError as e:
        raise DataError(f"{e} (run verify)") from None
    keys = np.concatenate(sample) if sample else np.zeros(0, np.uint64)
    unique, counts = np.unique(keys, return_counts=True)
    top = np.sort(counts)[::-1]
    raw = manifest.raw
    return {
        "folder": folder, "rows": manifest.rows, "nnz": manifest.nnz,
        "label_rate": manifest.label_rate, "labels": raw.get("labels"),
        "input_format": raw.get("input_format"), "inputs": len(raw.get("inputs", [])),
        "skipped_lines": raw.get("skipped_lines", 0), "hashing": raw.get("hashing"),
        "partitions": len(parts),
        "partition_rows": _spread([p.rows for p in parts]),
        "partition_mib": _spread([Path(p.path).stat().st_size / 2**20 for p in parts]),
        "nnz_per_row": {"min": int(per_row_min) if manifest.rows else 0,
                        "mean": manifest.nnz / max(manifest.rows, 1), "max": int(per_row_max)},
        "has_values": any(p.has_values for p in parts),
        "keys": {"sampled_nnz": int(keys.size), "distinct_in_sample": int(unique.size),
                 "min": int(unique[0]) if unique.size else None,
                 "max": int(unique[-1]) if unique.size else None,
                 "top10_share": float(top[:10].sum() / max(keys.size, 1)),
                 "top1pct_share": float(top[:max(1, unique.size // 100)].sum()
                                        / max(keys.size, 1))},
    }


def inspect(folder: str, as_json: bool = False, sample_nnz: int = 10_000_000) -> int:
    info = summarise(folder, sample_nnz)
    if as_json:
        print(json.dumps(info, indent=1))
        return 0
    k, r, s = info["keys"], info["partition_rows"], info["partition_mib"]
    per_row = info["nnz_per_row"]
    print(f"{folder}: {info['rows']:,} rows, {info['nnz']:,} nonzeros "
          f"({per_row['min']}/{per_row['mean']:.1f}/{per_row['max']} per row min/mean/max), "
          f"label rate {info['label_rate']:.4f}")
    print(f"  source: {info['input_format']} from {info['inputs']} file(s), "
          f"{info['skipped_lines']} bad line(s) skipped, values "
          f"{'stored' if info['has_values'] else 'all 1 (binary)'}")
    print(f"  keys: {info['hashing'].get('method')}; {k['distinct_in_sample']:,} distinct in "
          f"the first {k['sampled_nnz']:,}; top 10 keys {k['top10_share']:.1%}, top 1% "
          f"{k['top1pct_share']:.1%} of nonzeros")
    print(f"  partitions: {info['partitions']}, rows {r['min']:.0f}/{r['median']:.0f}/"
          f"{r['max']:.0f}, MiB {s['min']:.1f}/{s['median']:.1f}/{s['max']:.1f} "
          "(min/median/max)")
    return 0


def verify(folder: str) -> int:
    """Check every partition against the manifest; print problems, exit 1 if any."""
    manifest = _load(folder)
    binary = manifest.raw.get("labels") == "binary"
    problems: list[str] = []
    for part in manifest.partitions:
        try:
            problems += check_partition(part.path, part, binary)
        except (OSError, KeyError) as e:  # h5py reports damaged files this way
            problems.append(f"{part.path}: unreadable: {e}")
    listed = {p.name for p in manifest.partitions}
    strays = sorted(p.name for p in Path(folder).glob("part-*.h5") if p.name not in listed)
    problems += [f"{folder}/{name}: not in the manifest" for name in strays]
    for problem in problems:
        print(f"data_tools verify: {problem}")
    if problems:
        print(f"{folder}: {len(problems)} problem(s)")
        return 1
    print(f"{folder}: OK, {len(manifest.partitions)} partition(s), {manifest.rows:,} rows, "
          f"{manifest.nnz:,} nonzeros, checksums match")
    return 0

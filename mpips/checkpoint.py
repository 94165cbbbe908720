"""Checkpoints: the servers' ranges in HDF5, named by a manifest, restartable.

A checkpoint is a folder ``DIR/ckpt-NNNNNN/`` with one ``server-S.h5`` per
live server (the keys, values and optimizer state of the ranges it owns, one
group per table) and ``manifest.json``: the files with their sizes and CRC32
checksums, the tables, the ring, the scheduler's work-queue position and the
app's state. Every file is written to a temporary name, fsynced and renamed;
the manifest comes last, so a folder with a manifest whose files all check
out is a complete checkpoint. ``--resume`` takes the newest complete one and
skips (and names) any that is corrupt or partial.

Shards are cut by key, not by server: on resume every server reads the key
ranges it owns from every shard, so a job may resume with another number of
servers.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .config import Option, non_negative, section

FORMAT = 1
MANIFEST = "manifest.json"
# Every INDEX_STEP-th key of a shard's table is kept beside its keys
# ("key_index"): a resuming server finds its ranges in a shard from the index
# and one short slice of keys, instead of reading every shard's keys whole.
INDEX_STEP = 4096

section("checkpoint", {
    "dir": Option(str, "", "checkpoint folder; empty: OUTPUT/checkpoints"),
    "every_tasks": Option(int, 0, "write a checkpoint after this many finished tasks "
                          "(0: never on a count)", non_negative),
    "every_seconds": Option(float, 0.0, "write a checkpoint after this many seconds "
                            "(0: never on a clock)", non_negative),
    "keep": Option(int, 2, "complete checkpoints to keep (older ones are removed)",
                   lambda v: None if v >= 1 else "must be >= 1"),
    "resume": Option(bool, False, "start from the newest complete checkpoint "
                     "(train --resume sets this)"),
})


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that fails its checks."""


def checkpoint_dir(cfg: Any) -> Path:
    return Path(cfg.checkpoint.dir or os.path.join(cfg.job.output, "checkpoints"))


def folder(root: Path, ckpt: int) -> Path:
    return root / f"ckpt-{ckpt:06d}"


def _fsync_rename(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dirfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_shard(root: Path, ckpt: int, server: int,
                tables: dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]
                ) -> dict[str, Any]:
    """Write one server's tables ``{name: (keys, values, state)}``; return the
    file's entry for the manifest."""
    where = folder(root, ckpt)
    where.mkdir(parents=True, exist_ok=True)
    final = where / f"server-{server}.h5"
    tmp = final.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        for name, (keys, values, state) in tables.items():
            g = f.create_group(f"tables/{name}")
            g.create_dataset("keys", data=keys)
            g.create_dataset("key_index", data=keys[::INDEX_STEP])
            g.attrs["index_step"] = INDEX_STEP
            g.create_dataset("values", data=values)
            for sname, arr in state.items():
                g.create_dataset(f"state/{sname}", data=arr)
    _fsync_rename(tmp, final)
    return {"file": final.name, "bytes": final.stat().st_size, "crc32": crc32_of(final),
            "keys": int(sum(t[0].size for t in tables.values()))}


def write_manifest(root: Path, ckpt: int, manifest: dict[str, Any], keep: int) -> Path:
    where = folder(root, ckpt)
    manifest = dict(manifest, format=FORMAT, id=ckpt)
    tmp = where / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync_rename(tmp, where / MANIFEST)
    for old in complete_ids(root)[:-keep]:
        for p in folder(root, old).iterdir():
            p.unlink()
        folder(root, old).rmdir()
    return where


def complete_ids(root: Path) -> list[int]:
    """Ids of folders that have a manifest, oldest first (not yet verified)."""
    if not root.is_dir():
        return []
    ids = []
    for p in root.glob("ckpt-*"):
        if (p / MANIFEST).is_file() and p.name[5:].isdigit():
            ids.append(int(p.name[5:]))
    return sorted(ids)


def verify(root: Path, ckpt: int) -> dict[str, Any]:
    """The manifest of checkpoint ``ckpt`` if every file checks out."""
    where = folder(root, ckpt)
    try:
        manifest = json.loads((where / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {manifest.get('format')} is not {FORMAT}")
    for entry in manifest["files"]:
        path = where / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says "
                                  f"{entry['bytes']} (partial write?)")
        if crc32_of(path) != entry["crc32"]:
            raise CheckpointError(f"{path}: checksum mismatch (corrupt)")
    return manifest


def newest_complete(root: Path, say=print) -> dict[str, Any]:
    """The newest checkpoint that verifies; corrupt ones are named and skipped."""
    for ckpt in reversed(complete_ids(root)):
        try:
            manifest = verify(root, ckpt)
        except CheckpointError as e:
            say(f"mpips: skipping checkpoint {ckpt}: {e}")
            continue
        manifest["folder"] = str(folder(root, ckpt))
        return manifest
    raise CheckpointError(f"no complete checkpoint in {root} to resume from")


def keys_below(g: h5py.Group, x: int) -> int:
    """How many of the sorted keys of shard table ``g`` are below ``x``:
    from its key index and one slice of at most INDEX_STEP keys (a shard
    without an index is searched whole)."""
    ds = g["keys"]
    if x >= 1 << 64:
        return int(ds.shape[0])
    if "key_index" not in g:
        return int(np.searchsorted(ds[...], np.uint64(x)))
    step = int(g.attrs["index_step"])
    j = int(np.searchsorted(g["key_index"][...], np.uint64(x)))  # index entries below x
    if j == 0:
        return 0
    start = (j - 1) * step  # keys[start] < x <= keys[j * step]
    window = ds[start:min(int(ds.shape[0]), j * step)]
    return start + int(np.searchsorted(window, np.uint64(x)))


def load_ranges(manifest: dict[str, Any], table: str, lo: int, hi: int
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every entry of ``table`` with a key in [lo, hi), from all shards
    (each read only where its keys fall in the range)."""
    keys, values, state = [], [], {}
    for entry in manifest["files"]:
        with h5py.File(Path(manifest["folder"]) / entry["file"], "r") as f:
            if f"tables/{table}" not in f:
                continue
            g = f[f"tables/{table}"]
            a, b = keys_below(g, lo), keys_below(g, hi)
            keys.append(g["keys"][a:b])
            values.append(g["values"][a:b])
            for sname in g.get("state", {}):
                state.setdefault(sname, []).append(g[f"state/{sname}"][a:b])
    if not keys:
        raise CheckpointError(f"{manifest['folder']}: no table {table!r}")
    merged = {n: np.concatenate(v) for n, v in state.items()}
    k = np.concatenate(keys)
    order = np.argsort(k, kind="stable")
    return k[order], np.concatenate(values)[order], {n: v[order] for n, v in merged.items()}

"""``manifest.json``: the list of partitions of a data set and their totals."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpips.data import storage
from mpips.data.format import MANIFEST, MANIFEST_FORMAT


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent manifest; the message names the file."""


@dataclass(frozen=True)
class PartitionInfo:
    """One partition as the manifest lists it."""

    name: str
    path: str
    rows: int
    nnz: int
    positives: float
    first_row: int
    sha256: str
    has_values: bool


@dataclass(frozen=True)
class Manifest:
    folder: str
    rows: int
    nnz: int
    label_rate: float
    partitions: tuple[PartitionInfo, ...]
    raw: dict[str, Any]

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.partitions]


def load_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json`` and check that its totals add up."""
    path = storage.join(folder, MANIFEST)
    try:
        raw = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is {folder} a converted data set? "
                            "see `python -m data_tools convert --help`)") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable manifest: {e}") from None
    if raw.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not an mpips manifest (format={raw.get('format')!r})")
    try:
        parts = tuple(PartitionInfo(
            name=p["name"], path=storage.join(folder, p["name"]), rows=int(p["rows"]),
            nnz=int(p["nnz"]), positives=float(p["positives"]), first_row=int(p["first_row"]),
            sha256=p["sha256"], has_values=bool(p["has_values"])) for p in raw["partitions"])
        manifest = Manifest(str(folder), int(raw["rows"]), int(raw["nnz"]),
                            float(raw["label_rate"]), parts, raw)
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    for p in parts:  # a partition is a file of this folder, never a path elsewhere
        if not p.name or Path(p.name).name != p.name or p.name.startswith("."):
            raise ManifestError(f"{path}: partition name {p.name!r} is not a file name in "
                                f"{folder}")
    if sum(p.rows for p in parts) != manifest.rows:
        raise ManifestError(f"{path}: partition rows do not add up to rows={manifest.rows}")
    return manifest


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write atomically: a temporary name, fsync, then rename over the final one."""
    final = Path(folder) / MANIFEST
    temp = Path(folder) / f".{MANIFEST}.tmp"
    with open(temp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, final)
    return final

"""``data_tools convert``: export files -> HDF5 partitions + manifest.

Every rank lists the inputs the same way, takes its share of the files
(:func:`split_by_size`), and writes the partitions of those files. Rank 0
gathers the partition records and writes the manifest; if any rank failed,
every rank deletes what it wrote and no manifest appears. Partitions are cut
per input file at row/byte targets, so their names and contents do not depend
on the number of ranks.
"""

from __future__ import annotations

import shutil
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from data_tools.errors import DataError
from data_tools.formats import FORMATS, ConvertOptions
from data_tools.formats.base import BadLineBudget
from data_tools.sources import find_inputs
from mpips.data import storage
from mpips.data.format import MANIFEST
from mpips.data.manifest import write_manifest
from mpips.data.queue import split_by_size
from mpips.data.writer import PartitionRecord, PartitionSink, dataset_manifest
from mpips.transport.collective import Comm

DEFAULT_TARGET_ROWS = 1_000_000
DEFAULT_TARGET_BYTES = 256 << 20


@dataclass
class OutputSpec:
    folder: str
    target_rows: int = DEFAULT_TARGET_ROWS
    target_bytes: int = DEFAULT_TARGET_BYTES
    compression: str | None = None
    overwrite: bool = False


def partition_file(name: str) -> bool:
    """Whether a file name is a partition of a data set, or one being written."""
    return name.startswith(("part-", ".part-")) and name.endswith((".h5", ".h5.tmp"))


# Where --overwrite converts, inside the output folder: the old data set
# stays whole until the new one is complete, and is then swapped for it.
STAGING = ".convert-staging"


def prepare_output(spec: OutputSpec) -> Path:
    """Create the folder; refuse to mix with an earlier data set unless told.
    Returns the folder to convert into: the output folder, or with
    ``overwrite`` over a data set, a staging folder inside it (see
    :func:`swap_in`). What an interrupted convert left (partial partitions,
    a staging folder) is removed."""
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / STAGING, ignore_errors=True)
    for path in folder.iterdir():
        if path.name.startswith(".part-") and path.name.endswith(".tmp"):
            path.unlink()
    old = [p for p in folder.iterdir() if p.name == MANIFEST or partition_file(p.name)]
    if old and not spec.overwrite:
        raise DataError(f"{folder}: already holds a data set ({old[0].name}); "
                        "use --overwrite or another folder")
    if not old:
        return folder
    (folder / STAGING).mkdir()
    return folder / STAGING


def swap_in(folder: Path, staging: Path) -> None:
    """Replace the data set in ``folder`` by the complete one in ``staging``:
    the old manifest goes first (no reader then takes the old set for whole),
    then its partitions; the new partitions move in, the manifest last."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for path in folder.iterdir():
        if path.is_file() and partition_file(path.name):
            path.unlink()
    for path in sorted(staging.iterdir()):
        if path.name != MANIFEST:
            path.replace(folder / path.name)
    (staging / MANIFEST).replace(folder / MANIFEST)
    staging.rmdir()


def _run_rank(comm: Comm, files: list[str], fmt_name: str, options: ConvertOptions,
              spec: OutputSpec) -> dict[str, Any]:
    """This rank's share of the work; never raises (so no rank hangs in a collective)."""
    sizes = [storage.size(f) for f in files]
    mine = split_by_size(sizes, comm.size)[comm.rank]
    budget = BadLineBudget(options.skip_bad)
    fmt = FORMATS[fmt_name](options, budget)
    records: list[PartitionRecord] = []
    sink: PartitionSink | None = None
    try:
        for index in mine:
            sink = PartitionSink(spec.folder, index, [files[index]], fmt.hashing(),
                                 spec.target_rows, spec.target_bytes, spec.compression)
            for block in fmt.blocks(files[index]):
                sink.write(block)
            records.extend(sink.finish())
            sink = None
        error = None
    except DataError as e:
        error = str(e)
    except Exception as e:  # a bug: report it, still reach the gather
        error = f"internal error on rank {comm.rank}: {e!r}\n{traceback.format_exc()}"
    if error is not None:
        if sink is not None:
            sink.abort()
        for record in records:
            (Path(spec.folder) / record.name).unlink(missing_ok=True)
        records = []
    return {"records": [r.as_dict() for r in records], "error": error,
            "skipped": budget.skipped, "examples": budget.examples,
            "hashing": fmt.hashing()}


def convert(inputs: list[str], fmt_name: str, options: ConvertOptions, spec: OutputSpec,
            comm: Comm | None = None) -> dict[str, Any]:
    """Convert on every rank of ``comm``; returns the manifest (raises DataError)."""
    comm = comm or Comm()
    if storage.is_url(spec.folder):
        return _convert_to_store(inputs, fmt_name, options, spec, comm)
    if fmt_name not in FORMATS:
        raise DataError(f"unknown format {fmt_name!r} (known: {', '.join(sorted(FORMATS))})")
    setup = None
    if comm.rank == 0:
        try:
            files = find_inputs(inputs)
            if not files:
                raise DataError(f"no input files under {' '.join(inputs)}")
            into = prepare_output(spec)
            setup = {"files": files, "error": None, "into": str(into)}
        except (DataError, OSError) as e:
            setup = {"files": [], "error": str(e)}
    setup = comm.bcast_json(setup)
    if setup["error"]:
        raise DataError(setup["error"])
    files = setup["files"]
    into = replace(spec, folder=setup["into"])
    staged = Path(into.folder) != Path(spec.folder)  # --overwrite over a data set
    result = _run_rank(comm, files, fmt_name, options, into)
    meta = {"created_by": "data_tools convert", "input_format": fmt_name,
            "labels": options.labels, "hashing": result["hashing"], "inputs": files}
    try:
        manifest = finish_dataset(comm, into, result, meta, options.skip_bad)
    except DataError:
        if staged and comm.rank == 0:  # the old data set stays as it was
            shutil.rmtree(into.folder, ignore_errors=True)
        raise
    if staged:
        outcome = None
        if comm.rank == 0:
            try:
                swap_in(Path(spec.folder), Path(into.folder))
                outcome = {"error": None}
            except OSError as e:
                outcome = {"error": f"{spec.folder}: cannot move the new data set in "
                                    f"from {into.folder}: {e}"}
        outcome = comm.bcast_json(outcome)
        if outcome["error"]:
            raise DataError(outcome["error"])
    return manifest


def _convert_to_store(inputs: list[str], fmt_name: str, options: ConvertOptions,
                      spec: OutputSpec, comm: Comm) -> dict[str, Any]:
    """Convert into a local folder on each rank, then upload: partitions
    first, the manifest last, so a reader never finds a manifest whose
    partitions are not all there (an old data set's manifest goes first)."""
    target = spec.folder.rstrip("/")
    check = None
    if comm.rank == 0:
        try:
            if storage.exists(storage.join(target, MANIFEST)) and not spec.overwrite:
                check = {"error": f"{target}: already holds a data set ({MANIFEST}); "
                                  "use --overwrite or another folder"}
            else:
                check = {"error": None}
        except OSError as e:
            check = {"error": f"{target}: {e}"}
    check = comm.bcast_json(check)
    if check["error"]:
        raise DataError(check["error"])
    with storage.staging(target) as stage:
        manifest = convert(inputs, fmt_name, options, replace(spec, folder=stage), comm)
        error = None
        try:
            if comm.rank == 0:
                old = storage.join(target, MANIFEST)
                if storage.exists(old):
                    storage.remove_tree(old)
            comm.bcast_json({})  # the old manifest is gone before any partition moves
            for part in manifest["partitions"]:
                mine = Path(stage) / part["name"]
                if mine.is_file():
                    storage.upload(mine, storage.join(target, part["name"]))
        except OSError as e:
            error = f"{target}: upload failed on rank {comm.rank}: {e}"
        errors = comm.gather_json({"error": error})
        outcome = None
        if comm.rank == 0:
            failed = [e["error"] for e in errors or [] if e["error"]]
            try:
                if not failed:
                    storage.upload(Path(stage) / MANIFEST, storage.join(target, MANIFEST))
                    names = {p["name"] for p in manifest["partitions"]}
                    for path, _ in storage.listing(target):  # an older set's leftovers
                        name = path.rsplit("/", 1)[-1]
                        if partition_file(name) and name not in names:
                            storage.remove_tree(path)
            except OSError as e:
                failed.append(f"{target}: cannot upload the manifest: {e}")
            outcome = {"error": "; ".join(failed) or None}
        outcome = comm.bcast_json(outcome)
    if outcome["error"]:
        raise DataError(outcome["error"])
    return manifest


def finish_dataset(comm: Comm, spec: OutputSpec, result: dict[str, Any],
                   meta: dict[str, Any], skip_limit: int = 0) -> dict[str, Any]:
    """Gather every rank's ``result`` (records, error, skipped); rank 0 writes the
    manifest if all went well. On any failure every rank deletes its partitions
    and DataError is raised everywhere."""
    results = comm.gather_json(result)
    outcome: dict[str, Any] | None = None
    if comm.rank == 0:
        assert results is not None
        try:
            outcome = _finish(results, meta, spec, skip_limit)
        except OSError as e:
            outcome = {"error": f"{spec.folder}: cannot write the manifest: {e}"}
    outcome = comm.bcast_json(outcome)
    if outcome["error"]:
        for record in result["records"]:
            (Path(spec.folder) / record["name"]).unlink(missing_ok=True)
        raise DataError(outcome["error"])
    return outcome["manifest"]


def _finish(results: list[dict[str, Any]], meta: dict[str, Any], spec: OutputSpec,
            skip_limit: int) -> dict[str, Any]:
    errors = [r["error"] for r in results if r["error"]]
    skipped = sum(r.get("skipped", 0) for r in results)
    if not errors and skip_limit and skipped > skip_limit:
        errors.append(f"{skipped} bad lines in all, more than --skip-bad {skip_limit}")
    manifest = dataset_manifest(results, meta)
    if not errors and manifest["rows"] == 0:
        errors.append(f"no rows in the input ({len(meta.get('inputs', []))} file(s), "
                      "all empty?)")
    if errors:
        return {"error": "; ".join(errors), "manifest": None}
    write_manifest(spec.folder, manifest)
    if skipped:
        print(f"data_tools: skipped {skipped} bad line(s)", file=sys.stderr)
    return {"error": None, "manifest": manifest}

"""Commands around linear models: ``predict``, ``inspect``, ``plot`` (wired into
``python -m mpips``), and ``split`` (``python -m mpips.apps.linear.tools split``)
which cuts a converted data set into train and test folders by partition.

``predict`` runs alone (numpy in one process) or under ``mpiexec``: each rank
scores a contiguous share of every partition's rows; rank 0 gathers the
shares in row order, writes the output and prints exact metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...data import load_manifest
from ...data.manifest import ManifestError, write_manifest
from ...keys import feature_names
from .model import BIAS_KEY, metrics_of, read_model, read_share, sigmoid


# ---- predict -------------------------------------------------------------------------
def predict(model_path: str, data: str, out: str | None, chunk_rows: int = 65536,
            rank: int = 0, size: int = 1) -> np.ndarray:
    """(global row id, margin, label) rows of this rank's share of ``data``
    (a contiguous slice of every partition); writes nothing."""
    model = read_model(model_path)
    manifest = load_manifest(data)
    pieces = [np.zeros((0, 3))]
    for part in manifest.partitions:
        for mb in read_share(part.path, rank, size, chunk_rows, chunk_rows):
            ids = part.first_row + mb.first_row + np.arange(mb.rows)
            pieces.append(np.column_stack([ids, model.margins(mb.indptr, mb.keys, mb.values),
                                           mb.labels]))
    return np.concatenate(pieces)


def cmd_predict(args: argparse.Namespace) -> int:
    from ...transport.collective import Comm  # MPI only when started by a launcher

    comm = Comm()
    try:
        model = read_model(args.model)
        scored = predict(args.model, args.data, args.out, args.chunk_rows,
                         comm.rank, comm.size)
        error = None
    except (ValueError, ManifestError, OSError) as e:
        scored, error = np.zeros((0, 3)), str(e)
    if comm.size > 1:
        # Shares travel as files next to the output: numpy binary, not JSON floats.
        part = Path(f"{args.out}.rank{comm.rank}.npy")
        if error is None:
            np.save(part, scored)
        errors = comm.gather_json(error)
        if comm.rank != 0:
            return 0
        error = next((e for e in errors if e), None)
        if error is None:
            scored = np.concatenate([np.load(f"{args.out}.rank{r}.npy")
                                     for r in range(comm.size)])
            scored = scored[np.argsort(scored[:, 0], kind="stable")]  # row order
        for r in range(comm.size):
            Path(f"{args.out}.rank{r}.npy").unlink(missing_ok=True)
    if error is not None:
        print(f"mpips predict: {error}", file=sys.stderr)
        return 1
    margin, y = scored[:, 1], scored[:, 2]
    score = sigmoid(margin) if model.loss == "logistic" else margin
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    temp = Path(args.out).with_name(f".{Path(args.out).name}.tmp")
    with open(temp, "w") as f:
        f.write("label\tscore\tmargin\n")
        np.savetxt(f, np.column_stack([y, score, margin]), fmt=["%.0f", "%.6g", "%.6g"],
                   delimiter="\t")
    temp.replace(args.out)
    metrics = metrics_of(margin, y, model.loss)
    metrics.update(model=args.model, data=args.data, ranks=comm.size)
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(metrics) + "\n")
    print(json.dumps(metrics))
    return 0


# ---- inspect -------------------------------------------------------------------------
def model_hashing(m: Any, data: str | None = None) -> dict[str, Any] | None:
    """How the model's keys were made: the ``hashing`` record of ``data``'s
    manifest, else the one the model keeps, else its training set's."""
    if data:
        return load_manifest(data).raw.get("hashing")
    kept = m.attrs.get("hashing")
    if isinstance(kept, str) and kept not in ("", "null"):
        return json.loads(kept)
    cfg = m.attrs.get("config")
    train = json.loads(cfg).get("data", {}).get("train") if isinstance(cfg, str) else None
    if train:
        try:
            return load_manifest(train).raw.get("hashing")
        except ValueError:
            return None  # moved or gone: keys are shown as they are
    return None


def inspect_model(path: str, top: int = 10, data: str | None = None) -> dict[str, Any]:
    m = read_model(path)
    w = m.weights
    features = m.keys != BIAS_KEY
    wf = w[features]
    order = np.argsort(-np.abs(wf))[:top]
    cfg = m.attrs.get("config")
    hashing = model_hashing(m, data)
    top_keys = m.keys[features][order]
    names = feature_names(top_keys, hashing)
    return {"model": str(path), "keys": int(m.keys.size),
            "nonzero": int(np.count_nonzero(wf)), "bias": m.bias,
            "l1_norm": float(np.abs(wf).sum()), "l2_norm": float(np.sqrt((wf ** 2).sum())),
            "max_abs": float(np.abs(wf).max()) if wf.size else 0.0,
            "loss": m.loss, "algorithm": m.attrs.get("algorithm"),
            "examples": m.attrs.get("examples"), "state": sorted(m.state),
            "job": json.loads(cfg).get("job", {}).get("name") if isinstance(cfg, str) else None,
            "hashing": (hashing or {}).get("method"),
            "top": [{"key": int(k), "feature": n, "weight": float(v)}
                    for k, n, v in zip(top_keys, names, wf[order], strict=True)]}


def export_model(path: str, out: str, data: str | None = None) -> int:
    """Every weight as TSV (feature, key, weight; by |weight|, the intercept
    first), written to a temporary name and renamed. Returns the rows."""
    m = read_model(path)
    order = np.argsort(-np.abs(m.weights), kind="stable")
    keys, weights = m.keys[order], m.weights[order]
    bias = keys == BIAS_KEY
    keys, weights = np.r_[keys[bias], keys[~bias]], np.r_[weights[bias], weights[~bias]]
    names = feature_names(keys, model_hashing(m, data))
    names = ["(intercept)" if k == BIAS_KEY else n for k, n in zip(keys, names, strict=True)]
    temp = Path(out).with_name(f".{Path(out).name}.tmp")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(temp, "w") as f:
        f.write("feature\tkey\tweight\n")
        f.writelines(f"{n}\t{int(k):#018x}\t{v:.9g}\n"
                     for n, k, v in zip(names, keys.tolist(), weights.tolist(), strict=True))
    temp.replace(out)
    return int(keys.size)


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        info = inspect_model(args.model, args.top, args.data)
        if args.export:
            rows = export_model(args.model, args.export, args.data)
            print(f"mpips inspect: {rows} weights written to {args.export}", file=sys.stderr)
    except (ValueError, OSError) as e:
        print(f"mpips inspect: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['model']}: {info['keys']} keys, {info['nonzero']} nonzero weights "
          f"({info['loss']} loss, {info['algorithm']}, {info['examples']} examples, "
          f"job {info['job']!r})")
    print(f"  bias {info['bias']:.6g}  |w|_1 {info['l1_norm']:.6g}  |w|_2 "
          f"{info['l2_norm']:.6g}  max |w| {info['max_abs']:.6g}  state {info['state']}")
    print(f"  top {len(info['top'])} features by |weight| (feature, key, weight; keys made "
          f"by {info['hashing'] or 'an unknown hashing'}):")
    for t in info["top"]:
        print(f"    {t['feature']:>24s}  {t['key']:#018x}  {t['weight']:+.6g}")
    return 0


# ---- plot ----------------------------------------------------------------------------
def read_metrics(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not JSON: {e}") from None
    return rows


def plot_metrics(paths: list[str], out: str) -> int:
    """Loss and AUC against time and examples: one colour per file in every
    panel, a line for train and points for test, markers on every point (a
    series of one point shows). Returns the points drawn; ValueError when a
    file has nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex="col")
    drawn = 0
    for i, path in enumerate(paths):
        rows = read_metrics(path)
        label = Path(path).parent.name or path
        colour = f"C{i % 10}"
        series = 0
        for split, style in (("train", ".-"), ("test", "o-")):
            r = sorted((x for x in rows if x.get("split") == split and "time" in x
                        and "examples" in x), key=lambda x: x["time"])
            if not r:
                continue
            series += 1
            t = [x["time"] for x in r]
            ex = [x["examples"] for x in r]
            key = "loss" if split == "train" else ("logloss" if r[0].get("logloss")
                                                   is not None else "loss")
            loss = [x.get(key) for x in r]
            kw = {"color": colour, "ms": 4 if split == "test" else 3}
            axes[0, 0].plot(t, loss, style, label=f"{label} {split} {key}", **kw)
            axes[0, 1].plot(ex, loss, style, label=f"{label} {split} {key}", **kw)
            drawn += 2 * len(r)
            if split == "test":
                auc = [x.get("auc") for x in r]
                axes[1, 0].plot(t, auc, style, label=f"{label} test AUC", **kw)
                axes[1, 1].plot(ex, auc, style, label=f"{label} test AUC", **kw)
                drawn += 2 * len(r)
        if not series:
            plt.close(fig)
            raise ValueError(f"{path}: no train or test lines to plot (is it a linear "
                             "job's metrics.jsonl?)")
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel("test AUC")
    axes[1, 0].set_xlabel("time (s)")
    axes[1, 1].set_xlabel("examples")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=7)
    axes[1, 1].legend(fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return drawn


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("mpips plot: needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    try:
        drawn = plot_metrics(args.metrics, args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"mpips plot: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({drawn} points)")
    return 0


# ---- split -----------------------------------------------------------------------------
def split_dataset(src: str, train: str, test: str, test_partitions: int) -> None:
    """Move the last ``test_partitions`` partitions of ``src`` into ``test`` and
    the rest into ``train``, each with its own manifest (files besides the
    partitions, like ``true_model.h5``, are copied to both); ``src`` is removed."""
    manifest = load_manifest(src)
    parts = manifest.raw["partitions"]
    if not 0 < test_partitions < len(parts):
        raise ValueError(f"{src}: {len(parts)} partitions cannot give {test_partitions} "
                         "to the test set and keep one for training")
    names = {p["name"] for p in parts}
    for folder, chosen in ((train, parts[:-test_partitions]), (test, parts[-test_partitions:])):
        os.makedirs(folder, exist_ok=True)
        first = 0
        for p in chosen:
            os.replace(Path(src) / p["name"], Path(folder) / p["name"])
            p["first_row"] = first
            first += p["rows"]
        for extra in os.listdir(src):
            if extra not in names and extra != "manifest.json" and not extra.startswith("."):
                shutil.copy(Path(src) / extra, Path(folder) / extra)
        raw = dict(manifest.raw, partitions=chosen, rows=first,
                   nnz=sum(p["nnz"] for p in chosen),
                   positives=sum(p["positives"] for p in chosen))
        raw["label_rate"] = raw["positives"] / max(1, first)
        write_manifest(folder, raw)
    shutil.rmtree(src)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpips.apps.linear.tools")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="cut a converted data set into train and test folders")
    s.add_argument("src")
    s.add_argument("train")
    s.add_argument("test")
    s.add_argument("--test-partitions", type=int, default=1)
    args = p.parse_args(argv)
    try:
        split_dataset(args.src, args.train, args.test, args.test_partitions)
    except (ValueError, OSError) as e:
        print(f"split: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

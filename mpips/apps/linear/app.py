"""The linear app on the scheduler and the servers: its job file section,
tables, work queue, progress line, metrics file and the merged model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ... import startup
from ...app import App, Table
from ...config import ConfigError, Option, non_negative, positive, section
from ...data import load_manifest
from ...data.manifest import Manifest, ManifestError
from ...data.queue import PartitionQueue
from ...data.reader import PartitionReader
from ...handles import AdaGradL1, Add, Assign, DecayingSGD, FTRLProximal, Handle
from ...postoffice import Command, Postoffice
from ..progress import Deltas
from .model import (
    LOSSES,
    Model,
    copy_model,
    link_model,
    metrics_of,
    read_model,
    write_model,
)
from .synthetic import Synthetic
from .worker import LinearWorker

ALGORITHMS = ("sgd", "adagrad", "ftrl")

section("linear", {
    "data": Option(str, "synthetic", "'synthetic' (built-in planted model) or 'partitions' "
                   "([data] train / test folders)", choices=("synthetic", "partitions")),
    "loss": Option(str, "logistic", "loss", choices=LOSSES),
    "algorithm": Option(str, "ftrl", "server update: sgd (decaying rate), adagrad, ftrl "
                        "(FTRL-Proximal)", choices=ALGORITHMS),
    "lr_scale": Option(str, "auto", "'auto': lr and alpha are in units of the data's "
                       "feature values, divided by the mean |value| of the training "
                       "nonzeros (1 for binary features), so one setting suits "
                       "tf-idf and one-hot data alike; 'none': used as given",
                       choices=("auto", "none")),
    "lr": Option(float, 0.1, "learning rate of sgd and adagrad", positive),
    "decay": Option(float, 0.0, "sgd: rate = lr / (1 + decay * t) ** decay_power, t = the "
                    "key's updates", non_negative),
    "decay_power": Option(float, 0.5, "sgd: exponent of the rate decay", non_negative),
    "alpha": Option(float, 0.1, "ftrl: alpha (per-coordinate rate scale)", positive),
    "beta": Option(float, 1.0, "ftrl: beta (rate smoothing)", non_negative),
    "l1": Option(float, 0.0, "L1 penalty (sgd/adagrad: prox step on the server; ftrl: its "
                 "own l1 on summed gradients)", non_negative),
    "l2": Option(float, 0.0, "L2 penalty (sgd/adagrad: l2 * w added to gradients of the mean "
                 "loss; ftrl: its own l2)", non_negative),
    "bias": Option(bool, True, "learn an intercept (a key every row has)"),
    "minibatch": Option(int, 1000, "rows per minibatch (synthetic data; partitions use "
                        "[data] minibatch)", positive),
    "epochs": Option(int, 2, "passes over the rows (synthetic data; partitions use "
                     "[data] epochs)", positive),
    "cache_bytes": Option(int, 1 << 30, "bytes of localised minibatches (keys, local CSR, "
                          "labels) a worker keeps to train on again in later epochs "
                          "instead of reading and localising them again; 0: none (with "
                          "key_sets, the partition being trained on too, where it fits)",
                          non_negative),
    "key_sets": Option(bool, True, "read each partition whose localised minibatches fit in "
                       "cache_bytes whole, register its key set with the servers and send "
                       "its minibatches as positions into it, so that the servers insert and "
                       "look up its keys once (they keep 12 bytes per key of each registered "
                       "partition until its minibatches are no longer kept for a later "
                       "pass); a larger partition streams by key"),
    "max_inflight": Option(int, 2, "requests a worker keeps outstanding (pull ahead needs "
                           ">= 2)", positive),
    "report_interval": Option(float, 1.0, "seconds between worker progress reports",
                              positive),
    "eval_every": Option(int, 1, "epochs between test evaluations (0: only at the end)",
                         non_negative),
    "eval_batch": Option(int, 20000, "rows scored per pull during evaluation", positive),
    "auc_exact_rows": Option(int, 200_000, "test sets up to this many rows get an exact "
                             "AUC; larger ones a histogram AUC", non_negative),
    "auc_bins": Option(int, 8192, "bins of the histogram AUC (margins in "
                       "[-auc_span, auc_span])", positive),
    "auc_span": Option(float, 16.0, "margin range of the AUC histogram", positive),
    "save_model": Option(bool, True, "write model.h5 in [job] output"),
    "save_state": Option(bool, False, "also write the optimizer state into model.h5"),
    "model_file": Option(str, "auto", "'copy': model.h5 holds the model, copied from the "
                         "servers' shards by the scheduler; 'virtual': the shards stay (in "
                         "model.shards/ beside it) and model.h5 reads its rows from them "
                         "through HDF5 virtual datasets, nothing copied (move the folder as "
                         "a whole); 'auto': virtual above 2^27 weights",
                         choices=("auto", "copy", "virtual")),
    "init_model": Option(str, "", "start from this model.h5 (warm start; train "
                         "--init-model): its weights, and its optimizer state where it "
                         "holds one of the same algorithm (FTRL needs it: save_state)"),
    "synthetic_rows": Option(int, 100_000, "synthetic training rows per worker", positive),
    "synthetic_test_rows": Option(int, 20_000, "synthetic test rows (shared)", positive),
    "synthetic_features": Option(int, 100_000, "synthetic feature ids", positive),
    "synthetic_nnz": Option(int, 20, "nonzero features per synthetic row", positive),
})


def make_handle(lc: Any, scale: float = 1.0) -> Handle:
    """The server's update rule; ``scale`` divides its rate (see ``lr_scale``)."""
    if lc.algorithm == "ftrl":
        return FTRLProximal(alpha=lc.alpha / scale, beta=lc.beta, l1=lc.l1, l2=lc.l2)
    if lc.algorithm == "adagrad":
        return AdaGradL1(lr=lc.lr / scale, l1=lc.l1)
    return DecayingSGD(lr=lc.lr / scale, decay=lc.decay, power=lc.decay_power, l1=lc.l1)


def value_scale(manifest: Manifest | None, sample_rows: int = 20_000) -> float:
    """Mean |value| of the nonzeros of the first training partition (its first
    ``sample_rows`` rows): 1 for binary features. Every rank reads the same
    rows, so every rank builds the same handle."""
    if manifest is None or not manifest.partitions:
        return 1.0
    part = manifest.partitions[0]
    if not part.has_values:
        return 1.0  # the manifest says so: no file to open
    with PartitionReader(part.path) as reader:
        values = reader.read_values(0, sample_rows)
    if values is None or values.size == 0:
        return 1.0
    mean = float(np.abs(values).mean())
    return mean if mean > 0 else 1.0


SAVE_RANGES = "linear.save_ranges"  # command: a server saves the ranges named
# Above this many weights model.h5 is virtual by default: copying a model
# through the scheduler costs a pass over it in one process.
VIRTUAL_MODEL_KEYS = 1 << 27


class LinearApp(App):
    name = "linear"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.lc = lc = cfg.linear
        self.train: Manifest | None = None
        self.test: Manifest | None = None
        if lc.data == "partitions":
            self.train = self._manifest("train", required=True)
            self.test = self._manifest("test", required=False)
            self.epochs, self.minibatch = cfg.data.epochs, cfg.data.minibatch
            self.train_rows = self.train.rows
            self.test_rows = self.test.rows if self.test else 0
        else:
            self.epochs, self.minibatch = lc.epochs, lc.minibatch
            self.train_rows = lc.synthetic_rows  # per worker; the scheduler scales it
            self.test_rows = lc.synthetic_test_rows
        self.exact_auc = 0 < self.test_rows <= lc.auc_exact_rows
        self.lr_scale = value_scale(self.train) if lc.lr_scale == "auto" else 1.0
        if lc.init_model and not Path(lc.init_model).is_file():
            raise ConfigError(f"{cfg.source}: [linear] init_model = {lc.init_model!r}: "
                              "no such file")
        # scheduler state
        self._deltas = Deltas()
        self._written_rounds: set[int] = set()
        self._metrics_path = Path(cfg.job.output) / "metrics.jsonl"
        self._metrics_started = False
        self._metrics_lines = 0  # lines of metrics.jsonl (a resumed run's included)

    def _manifest(self, key: str, required: bool) -> Manifest | None:
        folder = getattr(self.cfg.data, key)
        where = f"{self.cfg.source}: [data] {key}"
        if not folder:
            if required:
                raise ConfigError(f"{where} is empty: [linear] data = 'partitions' needs a "
                                  "converted data folder (python -m data_tools convert)")
            return None
        try:
            return load_manifest(folder)
        except ManifestError as e:
            raise ConfigError(f"{where} = {folder!r}: {e}") from None

    def tables(self) -> list[Table]:
        return [Table("w", vdim=1, dtype="float32",
                      handle=make_handle(self.lc, self.lr_scale)),
                Table("eval", vdim=1, dtype="float64", handle=Add()),
                Table("eval_rows", vdim=2, dtype="float64", handle=Assign())]

    def work_queue(self) -> PartitionQueue | None:
        if self.train is None:
            return None
        return PartitionQueue(self.train.paths, epochs=self.cfg.data.epochs,
                              shuffle=self.cfg.data.shuffle, seed=self.cfg.job.seed)

    # ---- worker ------------------------------------------------------------------
    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        return LinearWorker(self, po).run()

    # ---- server ------------------------------------------------------------------
    def on_server_start(self, po: Postoffice, server: Any) -> None:
        if self.lc.save_model:
            # ranges a server took over while the job ended (its shard went
            # out before): the scheduler asks their new owner for them
            po.on_command(SAVE_RANGES, lambda c: Command(SAVE_RANGES, self._save_shard(
                po, server, set(c.args["ranges"]), "-late")))
        if self.lc.init_model:
            model = self._init_model()
            loaded = server.load("w", model.keys, model.weights.astype(np.float32),
                                 {n: v.astype(np.float32) for n, v in model.state.items()})
            if po.layout.servers.index(po.rank) == 0:
                print(f"mpips: starting from {self.lc.init_model} ({model.keys.size} "
                      f"weights{', with optimizer state' if model.state else ''}; "
                      f"{loaded} on server 0)", flush=True)

    def _init_model(self) -> Model:
        """The model to start from, checked against this job's update rule."""
        where = f"{self.cfg.source}: [linear] init_model = {self.lc.init_model!r}"
        try:
            model = read_model(self.lc.init_model)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        needs = set(make_handle(self.lc).state)
        same = model.attrs.get("algorithm") == self.lc.algorithm
        if not same or not needs <= set(model.state):
            if self.lc.algorithm == "ftrl":
                raise ConfigError(
                    f"{where}: FTRL continues from its state (z, n), which this model "
                    f"does not hold (algorithm {model.attrs.get('algorithm')!r}, state "
                    f"{sorted(model.state) or 'none'}): train it with [linear] save_state = "
                    "true and the same algorithm")
            model.state = {}  # weights only: the accumulators start again
        return model

    def on_server_stop(self, po: Postoffice, server: Any) -> dict[str, Any]:
        """Write this server's share of the model, and where each of its
        ranges lies in it: the scheduler copies them into model.h5 in key
        order, a slice at a time."""
        if not self.lc.save_model:
            return {}
        return self._save_shard(po, server, None, "")

    def _save_shard(self, po: Postoffice, server: Any, ranges: set[int] | None,
                    tag: str) -> dict[str, Any]:
        """Write the ranges this server owns (those of ``ranges`` only, if
        given) to a shard file; say where each range lies in it."""
        keys, values, state = server.items("w", ranges)
        out = Path(self.cfg.job.output)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f".model.shard-{po.rank}{tag}.h5"
        write_model(path, keys, values.astype(np.float64),
                    state if self.lc.save_state else None)
        pieces, start = [], 0
        for r, store in server.ranges("w"):
            if ranges is None or r in ranges:
                pieces.append([int(r), start, len(store)])
                start += len(store)
        return {"model_shard": str(path), "model_ranges": pieces}

    # ---- scheduler ----------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {"metrics_lines": self._metrics_lines,
                "written_rounds": sorted(self._written_rounds)}

    def restore_state(self, state: dict[str, Any], counters: dict[str, float]) -> None:
        """Go on from the checkpoint: rates from its counts, metrics.jsonl
        from its lines (later ones describe work this run does again), and
        no test round written twice."""
        self._deltas = Deltas(counters)
        self._written_rounds = set(state.get("written_rounds", []))
        keep = int(state.get("metrics_lines", 0))
        lines = self._metrics_path.read_text().splitlines(keepends=True) \
            if self._metrics_path.is_file() else []
        if len(lines) > keep:
            print(f"mpips: {self._metrics_path}: {len(lines) - keep} line(s) after the "
                  "checkpoint dropped (that work is done again)", flush=True)
            self._metrics_path.write_text("".join(lines[:keep]))
        self._metrics_lines = min(keep, len(lines))
        self._metrics_started = True  # go on with the file

    def _write_metrics(self, record: dict[str, Any]) -> None:
        self._metrics_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if self._metrics_started else "w"  # a new run starts a new file
        self._metrics_started = True
        with open(self._metrics_path, mode) as f:
            f.write(json.dumps(record) + "\n")
        self._metrics_lines += 1

    def _epoch_rows(self, workers: int = 1) -> int:
        return self.train_rows * (workers if self.train is None else 1)

    def progress_fields(self, totals: dict[str, float], elapsed: float) -> dict[str, Any]:
        change, dt = self._deltas.step(totals, elapsed)
        examples = totals.get("examples", 0)
        dex, dloss = change.get("examples", 0), change.get("loss_sum", 0)
        dkeys = change.get("keys", 0)
        loss = dloss / dex if dex else float("nan")
        per_epoch = self._epoch_rows(int(totals.get("workers", 1)))
        total = per_epoch * self.epochs
        rate = examples / max(elapsed, 1e-9)
        # the rates and loss of the interval since the last line; the test
        # metrics of the last scored round, with its epoch
        ex_rate, key_rate = dex / dt, dkeys / dt
        if not dex and examples >= total > 0:
            # training is over (the job is scoring, or ending): the lines
            # from here on give the whole job's rates, not an idle interval's 0
            ex_rate, key_rate = rate, totals.get("keys", 0) / max(elapsed, 1e-9)
        fields: dict[str, Any] = {
            "epoch": round(examples / per_epoch, 3), "of": self.epochs,
            "examples": int(examples), "examples_per_s": ex_rate, "keys_per_s": key_rate,
            "train_loss": loss if dex else None}
        if "test_auc" in totals:
            fields.update(test_auc=totals["test_auc"], test_accuracy=totals["test_accuracy"],
                          test_epoch=int(totals["test_epoch"]))
        fields["eta_s"] = round((total - examples) / rate) if rate > 0 and examples < total \
            else None
        if dex:
            self._write_metrics({"time": round(elapsed, 3), "epoch": examples / per_epoch,
                                 "examples": int(examples), "split": "train", "loss": loss,
                                 "examples_per_s": dex / dt, "keys_per_s": dkeys / dt})
        rnd = totals.get("test_round")
        if rnd is not None and int(rnd) not in self._written_rounds \
                and not totals.get("test_final"):
            record: dict[str, Any] = {k[5:]: v for k, v in totals.items()
                                      if k.startswith("test_") and k != "test_final"}
            for k in ("round", "epoch", "rows", "positives", "examples"):
                record[k] = int(record.get(k, 0))
            record["auc_method"] = "exact" if self.exact_auc else "histogram"
            self._written_rounds.add(int(rnd))
            self._write_metrics(_test_record(record))
        return fields

    def finish(self, po, workers, servers, elapsed) -> None:
        evals = next((w["evals"] for w in workers if w.get("evals")), [])
        examples = sum(w.get("counters", {}).get("examples", 0) for w in workers)
        for ev in evals[:-1]:  # rounds the progress lines missed
            if ev["round"] not in self._written_rounds:
                self._written_rounds.add(ev["round"])
                self._write_metrics(_test_record(ev))
        final: dict[str, Any] = {}
        spent = time_spent(workers, servers)
        if evals:
            final = dict(evals[-1], final=True, job_seconds=round(elapsed, 3),
                         train_examples_per_s=examples / elapsed,
                         algorithm=self.lc.algorithm, lr_scale=self.lr_scale, **spent)
            if self.lc.data == "synthetic":
                final["planted"] = self._planted_reference()
        shards = [s for s in servers if s.get("model_shard")]
        model_path = Path(self.cfg.job.output) / "model.h5"
        model_keys = self._merge_model(po, shards, model_path, examples) if shards else 0
        if final:
            final["model_keys"] = model_keys
            self._write_metrics(_test_record(final))
        out = self.cfg.job.output
        if "planted" in final:
            p = final["planted"]
            print(f"planted model (the truth the data was drawn from): logloss "
                  f"{p['logloss']:.4f} accuracy {p['accuracy']:.4f} AUC {p['auc']:.4f}",
                  flush=True)
        if final:
            logloss = final.get("logloss")
            print(f"test: logloss {logloss if logloss is None else round(logloss, 4)} "
                  f"accuracy {final['accuracy']:.4f} AUC {final['auc']:.4f} "
                  f"({final['auc_method']}) over {final['rows']} rows", flush=True)
        rate, value = ("alpha", self.lc.alpha) if self.lc.algorithm == "ftrl" else \
            ("lr", self.lc.lr)
        if self.lr_scale != 1.0:
            print(f"update: {self.lc.algorithm} {rate} {value:g} / mean |feature value| "
                  f"{self.lr_scale:.4g} = {value / self.lr_scale:.4g} ([linear] lr_scale)",
                  flush=True)
        if spent:
            nonzeros = sum(w.get("counters", {}).get("nonzeros", 0) for w in workers)
            print(time_table(spent, examples, nonzeros), flush=True)
        print(f"{examples} examples in {elapsed:.1f} s ({examples / elapsed:.4g}/s); "
              f"{model_keys} weights" + (f" in {model_path}" if shards else "")
              + f"; metrics in {out}/metrics.jsonl", flush=True)

    def _merge_model(self, po: Postoffice, shards: list[dict[str, Any]], path: Path,
                     examples: int) -> int:
        """model.h5 from the servers' shards: each range copied from the
        shard that owned it, in range (= key) order, a slice at a time, so
        the scheduler never holds the model. Every range of the ring must
        be in some shard: the ranges of a server that died as the job ended
        are asked of their new owners, and a model with a range still
        missing is never written."""
        num_ranges = po.ring.num_ranges
        shards = shards + self._save_late(po, missing_ranges(shards, num_ranges))
        try:
            pieces = model_pieces(shards, num_ranges)
        except RuntimeError:
            for shard in shards:
                os.remove(shard["model_shard"])
            raise
        attrs = {"config": self.cfg.as_dict(), "source": self.cfg.source,
                 "loss": self.lc.loss, "algorithm": self.lc.algorithm,
                 "bias": self.lc.bias, "examples": int(examples),
                 # how the training data made its keys: inspect names features
                 "hashing": json.dumps(self.train.raw.get("hashing")
                                       if self.train is not None else None)}
        keys = sum(count for _, _, count in pieces)
        folder = path.with_name(path.stem + ".shards")  # model.shards/
        shutil.rmtree(folder, ignore_errors=True)  # an earlier run's
        layout = self.lc.model_file
        if layout == "auto":
            layout = "virtual" if keys > VIRTUAL_MODEL_KEYS else "copy"
        if layout == "copy":
            copy_model(path, pieces, attrs)
            for shard in shards:
                os.remove(shard["model_shard"])
            return keys
        # the shards stay, as model.shards/, and model.h5 reads its rows from
        # them: nothing is copied, whatever the model's size
        folder.mkdir(parents=True)
        moved = {}
        for shard in shards:
            old_path = Path(shard["model_shard"])
            moved[str(old_path)] = str(folder / old_path.name.lstrip(".").replace(
                "model.shard-", "server-rank-"))
            old_path.replace(moved[str(old_path)])
        link_model(path, [(moved[f], a, n) for f, a, n in pieces], attrs)
        return keys

    def _save_late(self, po: Postoffice, missing: list[int]) -> list[dict[str, Any]]:
        """Shards of ``missing`` ranges from their owners under the current
        ring (their server died after the others had saved their shards,
        and a replica took them over): one per owner that is alive."""
        owners: dict[int, list[int]] = {}
        for r in missing:
            rank = po.server_rank(int(po.ring.owners[r]))
            if rank not in po.van.dead:
                owners.setdefault(rank, []).append(r)
        shards = []
        for rank, ranges in sorted(owners.items()):
            answer = po.ask([rank], Command(SAVE_RANGES, {"ranges": ranges}))[0]
            shards.append(answer.args)
            print(f"mpips: {len(ranges)} range(s) of a server lost as the job ended saved "
                  f"by their new owner, rank {rank} ({po.layout.describe(rank)})", flush=True)
        return shards

    def _planted_reference(self) -> dict[str, float]:
        """Test metrics of the planted model itself: the best a model can do."""
        data = Synthetic(self.lc.synthetic_features, self.lc.synthetic_nnz, self.cfg.job.seed)
        rows, margin = data.rows(self.lc.synthetic_test_rows, 0)
        m = metrics_of(margin, rows.labels.astype(np.float64), "logistic")
        return {"logloss": m["logloss"], "accuracy": m["accuracy"], "auc": m["auc"]}


def missing_ranges(shards: list[dict[str, Any]], num_ranges: int) -> list[int]:
    """The ranges of the ring that no shard holds."""
    held = {int(r) for shard in shards for r, _, _ in shard["model_ranges"]}
    return sorted(set(range(num_ranges)) - held)


def model_pieces(shards: list[dict[str, Any]], num_ranges: int) -> list[tuple[str, int, int]]:
    """(shard file, start, count) of every range of the ring, in range
    order, from the servers' reports; RuntimeError when a range is in no
    shard (a model with a range missing is never written)."""
    pieces: dict[int, tuple[str, int, int]] = {}
    for shard in shards:
        for r, start, count in shard["model_ranges"]:
            pieces.setdefault(int(r), (shard["model_shard"], int(start), int(count)))
    missing = sorted(set(range(num_ranges)) - set(pieces))
    if missing:
        raise RuntimeError(f"the model's ranges {missing[:10]}"
                           f"{' ...' if len(missing) > 10 else ''} of {num_ranges} were "
                           "saved by no server (their server died while the job ended?): "
                           "no model.h5 written; resume from the last checkpoint")
    return [pieces[r] for r in sorted(pieces)]


def time_spent(workers: list[dict[str, Any]], servers: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the time went: the mean seconds of the workers' phases, the
    latest first push after launch, the servers' busy and serving seconds,
    and when the slowest rank (this one, the scheduler, included) reached
    each step of start-up."""
    times = [w["time"] for w in workers if w.get("time")]
    if not times:
        return {}
    steps = [r.get("startup") or {} for r in (*workers, *servers)] + [startup.steps()]
    phases = {k: sum(t["phases"].get(k, 0.0) for t in times) / len(times)
              for k in times[0]["phases"]}
    first = [t["first_push"] for t in times if t.get("first_push") is not None]
    return {"worker_seconds": sum(t["seconds"] for t in times) / len(times),
            "worker_phases": phases, "workers_timed": len(times),
            "first_push_s": max(first) if first else None,
            "startup_s": startup.slowest(steps),
            "server_busy_s": sum(s.get("busy_seconds", 0.0) for s in servers),
            "server_serve_s": sum(s.get("serve_seconds", 0.0) for s in servers),
            "servers_timed": sum("busy_seconds" in s for s in servers),
            "server_requests": sum(s.get("requests", 0) for s in servers),
            "server_requests_by_position": sum(s.get("requests_by_position", 0)
                                               for s in servers),
            "server_keysets_registered": sum(s.get("keysets_registered", 0) for s in servers),
            "server_keysets_held": sum(s.get("keysets_held", 0) for s in servers),
            # keys looked up for key sets: once per registration, and again
            # for a set whose store inserted keys since (another set's)
            "server_keyset_keys_resolved": sum(s.get("keyset_keys_resolved", 0)
                                               for s in servers)}


def time_table(spent: dict[str, Any], examples: int, nonzeros: int) -> str:
    """The job's end: each worker phase in seconds, share, per example and
    per nonzero (a worker's seconds over its share of the rows)."""
    n, total = spent["workers_timed"], spent["worker_seconds"]
    per_ex, per_nz = examples / n, nonzeros / n  # one worker's share
    lines = [f"time per worker (mean of {n}, {total:.2f} s each):",
             f"  {'phase':12s} {'s':>8s} {'%':>6s} {'us/example':>11s} {'ns/nonzero':>11s}"]
    for name, sec in spent["worker_phases"].items():
        lines.append(f"  {name:12s} {sec:8.3f} {100 * sec / max(total, 1e-9):6.1f} "
                     f"{1e6 * sec / per_ex if per_ex else 0.0:11.3f} "
                     f"{1e9 * sec / per_nz if per_nz else 0.0:11.2f}")
    tail = []
    if spent.get("first_push_s") is not None:
        tail.append(f"first push {spent['first_push_s']:.2f} s after launch")
    if spent.get("servers_timed"):
        busy, serve = spent["server_busy_s"], spent["server_serve_s"]
        tail.append(f"servers busy {busy:.2f} s of {serve:.2f} s serving "
                    f"({100 * busy / max(serve, 1e-9):.0f}%, {spent['servers_timed']} "
                    "server(s))")
        if spent.get("server_requests_by_position"):
            tail.append(f"{spent['server_requests_by_position']} of "
                        f"{spent['server_requests']} requests by key set position")
    if tail:
        lines.append("  " + "; ".join(tail))
    if spent.get("startup_s"):
        lines.append("  " + startup.line(spent["startup_s"]))
    return "\n".join(lines)


def _test_record(ev: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl test line: the documented keys first."""
    out = {"time": ev.get("time"), "epoch": ev.get("epoch"),
           "examples": int(ev.get("examples", 0)), "split": "test"}
    out.update({k: v for k, v in ev.items() if k not in out})
    return out



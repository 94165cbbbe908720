"""Command line of data_tools (``python -m data_tools ...``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from data_tools.convert import OutputSpec
from data_tools.errors import DataError
from data_tools.formats import FORMATS, ConvertOptions
from data_tools.sources import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_LINE_BYTES

EXAMPLES = """examples:
  python -m data_tools convert ../shared/data/news20.binary.train.libsvm.gz -o data/news20
  mpiexec -n 4 python -m data_tools convert exports/clicks/ --format criteo -o data/clicks
  python -m data_tools synth ctr --rows 10000000 -o data/ctr
  python -m data_tools inspect data/news20
  python -m data_tools verify data/news20
"""


def _size(text: str) -> int:
    """'256M', '1G', '4096' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="output folder of partitions")
    p.add_argument("--rows-per-partition", type=int, default=1_000_000,
                   help="close a partition at this many rows (default 1000000)")
    p.add_argument("--bytes-per-partition", type=_size, default=256 << 20,
                   help="... or at about this many bytes of arrays, e.g. 64M (default 256M)")
    p.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none",
                   help="HDF5 compression (default none: fastest to read)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier data set in the output folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools",
        description="Turn exported data (libsvm, criteo TSV, CSV, Parquet) into mpips HDF5 "
        "partitions, make synthetic data, inspect and verify data sets.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="export files/folders -> HDF5 partitions",
                          description="Convert files or Hadoop/Spark export folders (part-* "
                          "files, plain/.gz/.bz2; _SUCCESS, .crc and hidden files ignored; "
                          "nested dt=... folders walked in sorted order). Under mpiexec the "
                          "ranks share the files.",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="formats:\n" + "\n".join(
                              f"  {n:8s} {c.help}" for n, c in sorted(FORMATS.items())))
    conv.add_argument("inputs", nargs="+", help="input files or folders")
    conv.add_argument("-f", "--format", default="libsvm", choices=sorted(FORMATS))
    _add_output(conv)
    conv.add_argument("--labels", choices=["binary", "real"], default="binary",
                      help="binary: -1/+1 or 0/1, stored as 0/1 (default); real: any number")
    conv.add_argument("--keep-ids", action="store_true",
                      help="libsvm: keys are the integer ids themselves (no hashing)")
    conv.add_argument("--salt", type=int, default=0, help="libsvm: namespace salt for hashing")
    conv.add_argument("--skip-bad", type=int, default=0, metavar="N",
                      help="skip up to N malformed lines (reported) instead of failing")
    conv.add_argument("--chunk-bytes", type=_size, default=DEFAULT_CHUNK_BYTES,
                      help="text read per parsing step (default 1M)")
    conv.add_argument("--max-line-bytes", type=_size, default=DEFAULT_MAX_LINE_BYTES,
                      help="longest input line accepted (default 16M; parsing a line "
                      "takes about 35 times its size in memory)")
    conv.add_argument("--label", dest="label_column", help="csv/parquet: the label column")
    conv.add_argument("--numeric", type=_columns, default=[], help="csv/parquet: a,b,c")
    conv.add_argument("--categorical", type=_columns, default=[], help="csv/parquet: a,b,c")
    conv.add_argument("--delimiter", default=",", help="csv: field separator")
    conv.add_argument("--criteo-ints", type=int, default=13, help="criteo: integer columns")
    conv.add_argument("--criteo-cats", type=int, default=26, help="criteo: categorical columns")

    synth = sub.add_parser("synth", help="synthetic data with a planted model")
    kinds = synth.add_subparsers(dest="kind", required=True)
    ctr = kinds.add_parser("ctr", help="CTR-like rows: Zipf features, planted logistic model")
    _add_output(ctr)
    ctr.add_argument("--rows", type=int, default=1_000_000)
    ctr.add_argument("--fields", type=int, default=40, help="categorical fields (= nnz per row)")
    ctr.add_argument("--vocab", type=int, default=1_000_000,
                     help="ids in the largest field (smaller fields have fewer)")
    ctr.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of id popularity")
    ctr.add_argument("--density", type=float, default=0.1,
                     help="fraction of features with a nonzero true weight")
    ctr.add_argument("--weight-scale", type=float, default=1.0,
                     help="std of the nonzero true weights")
    ctr.add_argument("--bias", type=float, default=-1.5, help="true intercept")
    ctr.add_argument("--seed", type=int, default=0)
    ctr.add_argument("--chunk-rows", type=int, default=100_000)
    lda = kinds.add_parser("lda", help="documents from a planted topic model")
    _add_output(lda)
    lda.add_argument("--docs", type=int, default=10_000)
    lda.add_argument("--vocab", type=int, default=5_000)
    lda.add_argument("--topics", type=int, default=20)
    lda.add_argument("--doc-length", type=float, default=100.0, help="mean tokens per doc")
    lda.add_argument("--alpha", type=float, default=0.1, help="document-topic Dirichlet")
    lda.add_argument("--beta", type=float, default=0.01, help="topic-word Dirichlet")
    lda.add_argument("--seed", type=int, default=0)
    lda.add_argument("--chunk-rows", type=int, default=10_000)

    insp = sub.add_parser("inspect", help="rows, nonzeros, label rate, keys, partition sizes")
    insp.add_argument("folder")
    insp.add_argument("--json", action="store_true", help="print JSON")
    insp.add_argument("--sample-nnz", type=int, default=10_000_000,
                      help="keys read for the key statistics (default 1e7)")
    ver = sub.add_parser("verify", help="check checksums and structure of every partition")
    ver.add_argument("folder")

    bench = sub.add_parser("bench", help="conversion and reader throughput vs scikit-learn")
    bench.add_argument("file", help="a libsvm file (plain or .gz)")
    bench.add_argument("--minibatch", type=int, default=1000)
    bench.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    return parser


def _convert(args: argparse.Namespace) -> int:
    from data_tools.convert import convert
    from mpips.transport.collective import Comm

    options = ConvertOptions(
        labels=args.labels, keep_ids=args.keep_ids, salt=args.salt, skip_bad=args.skip_bad,
        chunk_bytes=args.chunk_bytes, max_line_bytes=args.max_line_bytes,
        label_column=args.label_column, numeric=args.numeric,
        categorical=args.categorical, criteo_ints=args.criteo_ints,
        criteo_cats=args.criteo_cats, delimiter=args.delimiter)
    comm = Comm()
    manifest = convert(args.inputs, args.format, options, _spec(args), comm)
    if comm.rank == 0:
        print(f"{args.output}: {manifest['rows']} rows, {manifest['nnz']} nonzeros, "
              f"label rate {manifest['label_rate']:.4f}, "
              f"{len(manifest['partitions'])} partition(s) from {len(manifest['inputs'])} "
              f"file(s) on {comm.size} rank(s)")
    return 0


def _spec(args: argparse.Namespace) -> OutputSpec:

    return OutputSpec(args.output, args.rows_per_partition, args.bytes_per_partition,
                      None if args.compression == "none" else args.compression, args.overwrite)


def _synth(args: argparse.Namespace) -> int:
    from data_tools import synth
    from mpips.data import storage

    if storage.is_url(args.output):
        raise DataError(f"-o {args.output}: synth writes a local folder (upload it with "
                        "your store's tools, or write there with data_tools convert)")

    params = {k: v for k, v in vars(args).items()
              if k not in ("command", "kind", "output", "rows_per_partition",
                           "bytes_per_partition", "compression", "overwrite")}
    run = synth.synth_ctr if args.kind == "ctr" else synth.synth_lda
    summary = run(_spec(args), **params)
    if summary is not None:
        print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            return _convert(args)
        if args.command == "synth":
            return _synth(args)
        if args.command == "inspect":
            from data_tools.inspect import inspect

            return inspect(args.folder, as_json=args.json, sample_nnz=args.sample_nnz)
        if args.command == "verify":
            from data_tools.inspect import verify

            return verify(args.folder)
        if args.command == "bench":
            from data_tools.bench import bench

            return bench(args.file, args.minibatch, args.workdir)
    except DataError as e:
        print(f"data_tools {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2

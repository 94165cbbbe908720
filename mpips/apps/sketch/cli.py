"""``python -m mpips query``: ask a running or finished count-min sketch job.

Kept free of heavy imports: the command line builds its parser from here.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-output", required=True, metavar="DIR",
                   help="the job's [job] output folder")
    p.add_argument("--ids", nargs="+", type=int, default=[],
                   help="integer item ids (hashed as the job hashes them)")
    p.add_argument("--strings", nargs="+", default=[], help="string items")
    p.add_argument("--keys", nargs="+", type=int, default=[], help="raw uint64 keys")
    p.add_argument("--top", type=int, default=0, help="heavy hitters: the K largest")
    p.add_argument("--fraction", type=float, default=0.0,
                   help="heavy hitters: only estimates >= FRACTION * total count")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for a running job's answer")


def cli_query(args: argparse.Namespace) -> int:
    from .queries import query
    q = {"ids": args.ids, "strings": args.strings, "keys": args.keys, "top": args.top,
         "fraction": args.fraction}
    try:
        answer = query(args.job_output, q, timeout=args.timeout)
    except (TimeoutError, ValueError) as e:
        print(f"mpips: query: {e}", file=sys.stderr)
        return 1
    if "error" in answer:
        print(f"mpips: query: {answer['error']}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=1))
    return 0

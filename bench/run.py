"""`make bench`: runs every benchmark, writes bench/results/NAME.json and docs/benchmarks.md.

Select some with BENCH_ONLY=name1,name2.
"""

from __future__ import annotations

import importlib
import os
import sys

from bench.common import render_docs, write_result

BENCHMARKS = ["grpc_round_trip", "retrieval", "rank", "rank_tiers", "recommend", "events", "load"]
# Run only when named in BENCH_ONLY: `scale` takes many minutes and about 8 GiB.
ON_REQUEST = ["scale"]


def main() -> int:
    only = {name for name in os.environ.get("BENCH_ONLY", "").split(",") if name}
    for name in BENCHMARKS + ON_REQUEST:
        if (only and name not in only) or (not only and name in ON_REQUEST):
            continue
        sys.stderr.write(f"bench: running {name}\n")
        result = importlib.import_module(f"bench.{name}").run()
        path = write_result(name, result)
        sys.stderr.write(f"bench: wrote {path}\n")
    render_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

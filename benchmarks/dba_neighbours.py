"""Cost of database-side augmentation's neighbour search (``sbir.index.dba.gallery_neighbours``) by gallery size.

Every ``sbir index build`` and ``sbir index update`` of an index with ``--dba K`` finds each photo's K nearest
other photos: exactly up to ``EXACT_NEIGHBOURS_UP_TO`` photos, in an HNSW graph above. This times
the function as the index calls it, at D = 1,280 (the general model's embedding), on the synthetic
embedding-like vectors of ``benchmarks/index_search.py`` (``embeddings_like``), and measures the recall of
the neighbours against exact search on ``--check`` sampled photos.

    python benchmarks/dba_neighbours.py [--sizes 10000 50000 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_main, write_result  # noqa: E402
from index_search import embeddings_like  # noqa: E402

from sbir.index.dba import DEFAULT_DBA, EXACT_NEIGHBOURS_UP_TO, gallery_neighbours  # noqa: E402
from sbir.index.faiss_ops import HNSW_DEFAULTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--k", type=int, default=DEFAULT_DBA)
    ap.add_argument("--check", type=int, default=300, help="photos whose neighbours are checked against exact search")
    ap.add_argument("--intrinsic-dim", type=int, default=32)
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    basis = np.linalg.qr(rng.normal(size=(args.dim, args.intrinsic_dim)))[0].astype(np.float32)  # (D, d) orthonormal
    rows = []
    for n in args.sizes:
        x = embeddings_like(n, args.dim, basis, args.noise, rng)
        t0 = time.perf_counter()
        nb = gallery_neighbours(x, args.k)
        seconds = time.perf_counter() - t0
        sample = rng.choice(n, min(args.check, n), replace=False)
        sims = x[sample] @ x.T
        sims[np.arange(len(sample)), sample] = -np.inf  # never its own neighbour
        exact = np.argsort(-sims, axis=1)[:, : args.k]
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact, nb[sample], strict=True)]))
        row = {
            "photos": n,
            "method": "exact" if n <= EXACT_NEIGHBOURS_UP_TO else f"hnsw {HNSW_DEFAULTS}",
            "seconds": round(seconds, 1),
            f"recall@{args.k}": round(recall, 4),
        }
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    write_result(
        "dba_neighbours",
        {
            "dim": args.dim,
            "k": args.k,
            "vectors": f"embeddings_like (benchmarks/index_search.py), intrinsic dim {args.intrinsic_dim}, "
            f"noise {args.noise}",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(run_main(main))

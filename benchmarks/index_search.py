"""Query latency and recall of exact vs approximate index search at 10k, 100k and 1M vectors.

Vectors are synthetic stand-ins for embeddings: D=512 (the default projection
size; 1M x 1280 float32 would need 5 GB), L2-normalised. Learned embeddings
have a low intrinsic dimension, so the vectors are a standard Gaussian in
``--intrinsic-dim`` (32) dimensions, mapped into D dimensions by a fixed random
orthonormal basis, normalised, plus ``--noise`` isotropic noise, normalised
again. Calibration against real embeddings (pretrained EfficientNet-Lite0, 400
Sketchy photos): the 10th nearest neighbour lies 2.1 standard deviations above
the median similarity there and 2.2 here (the 1st: 4.7 there, 2.6 here, so
real data has closer near-duplicates). Isotropic noise in all 512 dimensions
(a first version of this script) is a far harder, unrealistic case: at 1M
vectors the exact top-10 are then essentially random vectors, and IVF-PQ
recall@10 fell to 0.06-0.12. Queries come from the same distribution and are
not in the index.

For every size the script measures, through :class:`sbir.index.faiss_ops.Searcher`
(the code ``sbir search`` / ``sbir serve`` run):

* exact (``IndexFlatIP``): single-query latency p50/p99;
* HNSW (``IndexHNSWFlat``, inner product) with the library defaults: build
  time, and latency and recall@10 against exact search for several efSearch;
* IVF-PQ with exact re-ranking of the candidates: train+add time, latency
  and recall@10 for several nprobe (and without re-ranking).

With ``--milvus-lite`` it also measures the Milvus store (``sbir index build
--store PATH.db``) on the same vectors: the rows are written through
:func:`sbir.index.milvus_store.write_rows` into a Milvus Lite file (the real
Milvus engine, embedded) and queried one at a time through
:class:`sbir.index.milvus_store.MilvusSearcher`, as ``sbir search`` does: FLAT
(``--approx none``) and HNSW with the same M / efConstruction and each efSearch.

Prints JSON and writes ``benchmarks/results/index_search.json``. Usage::

    python benchmarks/index_search.py                       # 10k, 100k, 1M
    python benchmarks/index_search.py --sizes 10000 100000  # quicker
    python benchmarks/index_search.py --sizes 100000 --faiss exact hnsw --milvus-lite --out index_search-milvus
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_main, write_result  # noqa: E402

from sbir.index.faiss_ops import HNSW_DEFAULTS, IVFPQ_DEFAULTS, Searcher, build_faiss  # noqa: E402


def embeddings_like(
    n: int, dim: int, basis: np.ndarray, noise: float, rng: np.random.Generator, chunk: int = 100_000
) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, basis.shape[1]), dtype=np.float32) @ basis.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += noise * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + m] = x
    return out


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    _, ids = index.search(queries, k)
    return ids


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(ids, truth, strict=True)]))


def latency(searcher: Searcher, queries: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """One query at a time, as a server answers requests; returns stats (ms) and the ids."""
    searcher.search(queries[:3], k)  # warm-up
    times = []
    ids = np.empty((len(queries), k), np.int64)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, row = searcher.search(q[None], k)
        times.append((time.perf_counter() - t0) * 1e3)
        ids[i] = row[0]
    t = np.asarray(times)
    stats = {
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "mean_ms": round(float(t.mean()), 3),
    }
    return stats, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300, help="single queries timed per configuration")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--intrinsic-dim", type=int, default=32, help="dimension of the subspace the vectors live near")
    ap.add_argument("--noise", type=float, default=0.02, help="per-dimension isotropic noise added in all D dimensions")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--skip-hnsw-above", type=int, default=None, help="skip HNSW for sizes above this (build time)")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads per search (Searcher default: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--faiss", nargs="*", choices=("exact", "hnsw", "ivfpq"), default=["exact", "hnsw", "ivfpq"], help="FAISS kinds"
    )
    ap.add_argument("--milvus-lite", action="store_true", help="also measure the Milvus store in a Milvus Lite file")
    ap.add_argument(
        "--milvus-kinds",
        nargs="+",
        choices=("none", "hnsw"),
        default=["none", "hnsw"],
        help="Milvus index kinds (Milvus Lite 2.x builds FLAT for every kind)",
    )
    ap.add_argument("--out", default="index_search")
    args = ap.parse_args()

    results = []
    for n in args.sizes:
        gauss = np.random.default_rng(args.seed).standard_normal((args.dim, args.intrinsic_dim))
        basis = np.linalg.qr(gauss)[0].astype(np.float32)
        queries = embeddings_like(args.queries, args.dim, basis, args.noise, np.random.default_rng(args.seed + 1))
        row: dict = {"n": n, "dim": args.dim}
        t0 = time.perf_counter()
        base = embeddings_like(n, args.dim, basis, args.noise, np.random.default_rng(args.seed + 2))
        row["generate_s"] = round(time.perf_counter() - t0, 2)
        truth = ground_truth(base, queries, args.k)

        if "exact" in args.faiss:
            t0 = time.perf_counter()
            flat, _ = build_faiss(base, "none")
            row["exact"] = {"build_s": round(time.perf_counter() - t0, 3)}
            stats, ids = latency(Searcher(flat, "none", threads=args.threads), queries, args.k)
            row["exact"].update(stats, recall_at_10=recall_at(ids, truth))
            del flat
            print(f"n={n} exact {row['exact']}", file=sys.stderr, flush=True)

        if "hnsw" in args.faiss and (args.skip_hnsw_above is None or n <= args.skip_hnsw_above):
            t0 = time.perf_counter()
            hnsw, params = build_faiss(base, "hnsw")
            row["hnsw"] = {"params": params, "build_s": round(time.perf_counter() - t0, 2), "by_ef_search": []}
            print(f"n={n} hnsw build {row['hnsw']['build_s']} s", file=sys.stderr, flush=True)
            for ef in args.ef_search:
                hnsw.hnsw.efSearch = ef
                searcher = Searcher(hnsw, "hnsw", {**params, "ef_search": ef}, threads=args.threads)
                stats, ids = latency(searcher, queries, args.k)
                row["hnsw"]["by_ef_search"].append(
                    {"ef_search": ef, **stats, "recall_at_10": round(recall_at(ids, truth), 4)}
                )
                print(f"n={n} hnsw ef={ef} {row['hnsw']['by_ef_search'][-1]}", file=sys.stderr, flush=True)
            del hnsw

        if "ivfpq" in args.faiss and n >= 10_000:
            t0 = time.perf_counter()
            ivf, params = build_faiss(base, "ivfpq")
            row["ivfpq"] = {"params": params, "build_s": round(time.perf_counter() - t0, 2), "by_nprobe": []}
            print(f"n={n} ivfpq build {row['ivfpq']['build_s']} s", file=sys.stderr, flush=True)
            for nprobe in args.nprobe:
                for rerank in (params["rerank"], 0):
                    p = {**params, "nprobe": nprobe, "rerank": rerank}
                    ivf.nprobe = nprobe
                    stats, ids = latency(Searcher(ivf, "ivfpq", p, base, threads=args.threads), queries, args.k)
                    row["ivfpq"]["by_nprobe"].append(
                        {"nprobe": nprobe, "rerank": rerank, **stats, "recall_at_10": round(recall_at(ids, truth), 4)}
                    )
                    print(f"n={n} ivfpq {row['ivfpq']['by_nprobe'][-1]}", file=sys.stderr, flush=True)
            del ivf
        if args.milvus_lite:
            row["milvus_lite"] = milvus_lite_rows(base, queries, truth, args)
        results.append(row)
        del base
        write_partial(args, results)


def milvus_lite_rows(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> dict:
    """Write ``base`` into Milvus Lite collections (FLAT, HNSW) and time single queries as ``sbir search`` does."""
    import tempfile

    import milvus_lite
    import pymilvus

    from sbir.index.milvus_store import MilvusSearcher, StoreSpec, client_for, close_clients, milvus_params, write_rows

    n, dim = base.shape
    keys = [f"{i:012d}" for i in range(n)]  # the store's primary keys are content hashes; any unique string works
    out: dict = {"pymilvus": pymilvus.__version__, "milvus_lite": milvus_lite.__version__}
    with tempfile.TemporaryDirectory(prefix="sbir-milvus-bench-") as tmp:
        for kind, label in (("none", "flat"), ("hnsw", "hnsw")):
            if kind not in args.milvus_kinds:
                continue
            spec = StoreSpec(str(Path(tmp) / "bench.db"), f"bench_{label}")
            params = milvus_params(kind, n, dim, None)
            t0 = time.perf_counter()
            write_rows(
                spec,
                fresh=True,
                overwrite=True,
                model_id="bench",
                metric="ip",
                kind=kind,
                params=params,
                shas=keys,
                paths=keys,
                vectors=base,
                upsert=None,
                delete=set(),
            )
            entry: dict = {"params": params, "write_s": round(time.perf_counter() - t0, 2), "by_ef_search": []}
            # what Milvus built (Milvus Lite 2.x has only FLAT: sbir falls back to it there)
            entry["milvus_index_type"] = client_for(spec).describe_index(spec.collection, "vector")["index_type"]
            print(f"n={n} milvus-lite {label} write {entry['write_s']} s", file=sys.stderr, flush=True)
            for ef in args.ef_search if kind == "hnsw" else [None]:
                p = {**params, "ef_search": ef} if ef else params
                t0 = time.perf_counter()
                searcher = MilvusSearcher(spec, kind, p, keys)
                searcher.search(queries[:1], args.k)  # first search after the write: loads/indexes segments
                first = round(time.perf_counter() - t0, 2)
                stats, ids = latency(searcher, queries, args.k)
                res = {**stats, "recall_at_10": round(recall_at(ids, truth), 4), "first_search_s": first}
                if ef:
                    entry["by_ef_search"].append({"ef_search": ef, **res})
                else:
                    entry.update(res)
                    del entry["by_ef_search"]
                print(f"n={n} milvus-lite {label} ef={ef} {res}", file=sys.stderr, flush=True)
            out[label] = entry
        close_clients()
    return out


def write_partial(args, results) -> None:
    write_result(
        args.out,
        {
            "args": vars(args),
            "defaults": {"hnsw": HNSW_DEFAULTS, "ivfpq": IVFPQ_DEFAULTS},
            "faiss": faiss.__version__,
            "omp_threads": faiss.omp_get_max_threads(),
            "load_average_at_end": os.getloadavg(),
            "note": "synthetic unit vectors of intrinsic dimension --intrinsic-dim (see docstring); "
            "single-query latency; recall@10 vs exact search; milvus_lite: the Milvus store in a Milvus Lite "
            "file, queried through sbir.index.milvus_store.MilvusSearcher",
            "hnsw_skipped_above": args.skip_hnsw_above,
            "results": results,
        },
    )


if __name__ == "__main__":
    sys.exit(run_main(main))

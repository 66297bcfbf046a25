"""The label-free proxy, old and new, on a real embedding set: which configuration would a label-free search pick?

    python benchmarks/label_free_proxy.py [--dataset digits] [--split val] [--encoder tf_efficientnet_lite0.pypi_in1k]

Embeds the split (cached) with the offline ImageNet encoder, runs the 18 configurations of the issue
(PCA 50/200 and UMAP 5/10/20/50, each x K-Means, ward and HDBSCAN, K known where needed) through
``run_job``, and scores each clustering two ways in the same fixed UMAP-50 space of the embeddings:

* new (the study's protocol, zsclust's default): noise kept as one more label;
* old (zsclust before): HDBSCAN's noise points left out.

Prints each configuration's AMI, both proxies and the noise fraction, Spearman's rho of each proxy with
AMI over the 18, and the configuration each proxy picks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--split", default="val")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0.pypi_in1k")
    ap.add_argument("--preprocessing", default="study")
    args = ap.parse_args()

    from zsclust.cluster import JobData, JobSpec, ReductionCache, Scoring, label_free_space, run_job, spearman_rho
    from zsclust.cluster._metrics import umap_silhouette
    from zsclust.embed import EmbedOptions, embed

    start = time.perf_counter()
    emb = embed(args.encoder, args.dataset, split=args.split,
                options=EmbedOptions(precision="32-true", preprocessing=args.preprocessing, progress=False))
    data = JobData.from_embeddings(emb)
    print(f"{args.encoder} on {args.dataset}:{args.split}: {len(data.X)} x {data.X.shape[1]}, "
          f"{data.n_classes} classes ({time.perf_counter() - start:.0f} s to embed or load)")
    import tempfile

    cache = ReductionCache(tempfile.mkdtemp(prefix="zsclust-proxy-"))
    scoring = Scoring(silhouette_spaces=("umap50",))
    space = label_free_space(data, scoring, cache)
    reducers = {f"PCA {n}": {"name": "pca", "n_components": n} for n in (50, 200)}
    reducers |= {f"UMAP {n}": {"name": "umap", "n_components": n, "n_neighbors": 30, "min_dist": 0.0}
                 for n in (5, 10, 20, 50)}
    clusterers = {"K-Means": {"name": "kmeans", "n_clusters": "K"},
                  "ward": {"name": "agglomerative", "n_clusters": "K", "linkage": "ward"},
                  "HDBSCAN": {"name": "hdbscan", "min_cluster_size": 5}}
    rows = []
    for rname, reducer in reducers.items():
        for cname, clusterer in clusterers.items():
            out = run_job(data, JobSpec(cname, reducer, clusterer), seed=100, cache=cache, scoring=scoring, umap50=space)
            old = umap_silhouette(data.X, out.labels, X_reduced=space, noise="exclude")
            rows.append((f"{rname} + {cname}", out.metrics["ami"], out.metrics["silhouette_umap50"], old,
                         out.metrics["noise_fraction"]))
    print(f"\n{'configuration':<22} {'AMI':>7} {'new proxy':>10} {'old proxy':>10} {'noise':>7}")
    for name, ami, new, old, noise in rows:
        print(f"{name:<22} {ami:>7.3f} {new:>10.3f} {old:>10.3f} {noise:>7.2f}")
    ami = np.array([r[1] for r in rows])
    for label, col in (("new (noise as a label)", 2), ("old (noise left out)", 3)):
        values = np.array([r[col] for r in rows])
        pick = rows[int(np.nanargmax(values))]
        print(f"{label:<24} Spearman rho with AMI {spearman_rho(values, ami):.3f}; picks {pick[0]} "
              f"(AMI {pick[1]:.3f}; the best AMI is {ami.max():.3f})")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

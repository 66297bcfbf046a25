"""The ``zsclust`` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import ZsclustError

def _devices(value: str):
    if value in ("auto", "-1"):
        return "auto" if value == "auto" else -1
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices takes a number or 'auto', got '{value}'") from None


def _add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", required=True, help="registered encoder name (zsclust encoders) or any timm model name")
    p.add_argument("--dataset", required=True, help="registered dataset name (zsclust datasets) or an image folder")
    p.add_argument("--split", default="test", help="train, val (carved from train) or test [test]")
    p.add_argument("--root", default=None, help="datasets root [$ZSCLUST_DATA or ~/.cache/zsclust/data]")
    p.add_argument("--download", action="store_true", help="download the dataset where torchvision can")
    p.add_argument("--weights", default=None, help="local checkpoint file, for offline machines")
    p.add_argument("--seed", type=int, default=0, help="seed for carving val (and test where none ships) [0]")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted) instead of failing")
    p.add_argument("--devices", type=_devices, default=1, help="devices per node; >1 runs DDP [1]")
    p.add_argument("--num-nodes", type=int, default=1, help="number of nodes [1]")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    p.add_argument("--strategy", default="auto", help="Lightning strategy [ddp when more than one process]")
    p.add_argument("--batch-size", type=int, default=None, help="[256 on GPU; 32 on CPU, run in chunks of the size (4-32) timed fastest on the first batches]")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers [tuned per device]")
    p.add_argument("--preprocessing", default="model", choices=["model", "study"],
                   help="model: the encoder's own resize/crop/statistics; study: Lowe et al. 2024's (short side to "
                        "224, centre crop, ImageNet statistics but CLIP's) [model]")
    p.add_argument("--precision", default="auto",
                   help="auto (bf16/fp16 autocast on GPU, bf16 on CPUs that have it), 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per resumable shard [4096]")
    p.add_argument("--cache-dir", default=None, help="embedding cache [$ZSCLUST_CACHE_DIR or ~/.cache/zsclust/embeddings]")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _options(args):
    """``zsclust embed``'s flags as the one EmbedOptions schema (each flag is the option of the same name)."""
    import dataclasses

    from .embed import EmbedOptions

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EmbedOptions) if hasattr(args, f.name)}
    return EmbedOptions(**given, progress=not args.no_progress)


def cmd_embed(args) -> int:
    from .embed import embed

    result = embed(args.encoder, args.dataset, split=args.split, root=args.root, weights=args.weights,
                   download=args.download, seed=args.seed, skip_corrupt=args.skip_corrupt, options=_options(args))
    if result is None:  # not global zero
        return 0
    m = result.meta
    print(f"embeddings: {result.embeddings.shape[0]} x {result.embeddings.shape[1]}  "
          f"encoder={m['encoder']['name']}  dataset={m['dataset']['name']}:{m['dataset']['split']}  "
          f"precision={m['fingerprint_inputs']['precision']}")
    if m.get("num_skipped"):
        print(f"skipped {m['num_skipped']} unreadable image(s): indices {result.skipped[:20].tolist()}"
              + (" ..." if m["num_skipped"] > 20 else ""))
    if "samples_embedded_this_run" in m:
        secs = m["embed_seconds"]
        print(f"embedded {m['samples_embedded_this_run']} samples in {secs:.1f} s "
              f"({m['samples_embedded_this_run'] / max(secs, 1e-9):.1f} img/s"
              + (f", forward batch {m['forward_batch']}" if m.get("forward_batch") else "") + ")")
    else:
        print("cache hit: nothing to embed")
    from .embed import EmbeddingCache

    print(f"cache: {EmbeddingCache(args.cache_dir).entry(result.fingerprint).path}")
    if args.export:
        path = result.export_npz(args.export)
        print(f"exported: {path}")
    return 0


def cmd_encoders(args) -> int:
    from .encoders import encoder_table, list_encoders

    names = list_encoders(args.pattern)
    if not names:
        print(f"No registered encoder matches '{args.pattern}'; any timm model name works too.", file=sys.stderr)
        return 1
    print(encoder_table(names, markdown=args.markdown))
    if not args.markdown:
        print("\nAny timm model name is accepted too (timm.list_models()). --weights FILE_or_DIR for offline machines.")
    return 0


def cmd_datasets(args) -> int:
    from .data import get_dataset_spec, list_datasets

    for name in list_datasets(args.group):
        spec = get_dataset_spec(name)
        print(f"{name:20s} {spec.group:14s} {spec.description}")
    print("\nAny image folder (class/xxx.jpg, optionally under train/ and test/) is accepted too.")
    return 0


def cmd_cache(args) -> int:
    from .embed import EmbeddingCache

    cache = EmbeddingCache(args.cache_dir)
    entries = cache.list()
    for m in entries:
        print(f"{m['fingerprint']}  {m['encoder']['name']:35s} {m['dataset']['name']}:{m['dataset']['split']:6s} "
              f"{m['num_embedded']:>8d} x {m['dim']:<5d} {m['fingerprint_inputs']['precision']}")
    print(f"{len(entries)} complete entr{'y' if len(entries) == 1 else 'ies'} in {cache.root}")
    return 0


def _print_results(results, tracker) -> None:
    from .cluster import format_table

    print()
    print(format_table(results))
    failed = [r for r in results if r.error]
    if failed:
        print(f"\n{len(failed)} of {len(results)} job(s) failed; see the reasons above.")
    if tracker is not None:
        print(f"\nMLflow: {len(results)} run(s) in experiment '{tracker.experiment_name}' at {tracker.display_uri}")
        print("Open the UI with:  zsclust ui" + ("" if tracker.uri.startswith("sqlite") else
                                                 f"  (or browse {tracker.display_uri})"))


def _config_yaml(cfg) -> str:
    """The resolved config as YAML, its URLs without passwords (``--print-config`` output lands in logs)."""
    from ._secrets import redact_config
    from .config import to_container, to_yaml

    return to_yaml(redact_config(to_container(cfg)))


def _print_config(cfg) -> None:
    from ._build import describe_jobs, expand_jobs

    print(_config_yaml(cfg))
    jobs = expand_jobs(cfg)
    print(f"# {len(jobs)} job(s), one MLflow run each:\n" + "\n".join("#" + line for line in describe_jobs(jobs).splitlines()))


def cmd_run(args) -> int:
    from .config import load_config
    from .jobs import run_experiment

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        _print_config(cfg)
        return 0
    out = run_experiment(cfg)
    if out is None:  # not global zero
        return 0
    emb, results, tracker = out
    print(f"\nembeddings: {len(emb)} x {emb.embeddings.shape[1]} ({emb.fingerprint})")
    _print_results(results, tracker)
    return 1 if results and all(r.error for r in results) else 0


def cmd_cluster(args) -> int:
    from .config import load_config
    from .jobs import cluster_embeddings

    cfg = load_config(args.config, args.overrides)
    emb, results, tracker = cluster_embeddings(cfg, args.embeddings)
    print(f"embeddings: {len(emb)} x {emb.embeddings.shape[1]} ({emb.fingerprint})")
    _print_results(results, tracker)
    return 1 if results and all(r.error for r in results) else 0


def cmd_tune(args) -> int:
    from .jobs import tune
    from .tune import load_tune_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.isfile(config):  # only overrides were given
        config, overrides = None, [config, *overrides]
    if args.no_progress:
        overrides.append("embed.progress=false")
    cfgs = load_tune_config(config, overrides, embeddings=args.embeddings)
    if args.print_config:
        for cfg in cfgs:
            print(_config_yaml(cfg))
        return 0
    if args.status:
        from .tune import study_status

        print("\n\n".join(study_status(cfg) for cfg in cfgs))
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and one line per trial say it
    results = tune(cfgs, progress=not args.no_progress)
    if results is None:  # not global zero
        return 0
    for cfg, result in zip(cfgs, results):
        print()
        print(result.summary(cfg.objective.metric))
    return 0


def cmd_evaluate(args) -> int:
    from .jobs import evaluate_study

    overrides = [*args.overrides, *(["embed.progress=false"] if args.no_progress else [])]
    out = evaluate_study(args.study, storage=args.storage, overrides=overrides, embeddings=args.embeddings,
                         progress=not args.no_progress)
    if out is None:
        return 0
    from .cluster import format_table

    results = [r for o in out for r in o.results]
    for o in out:
        print(f"\nstudy '{args.study}': best params on the test split of {o.target} ({len(o.embeddings)} samples)")
        print(format_table(o.results))
    failed = [r for r in results if r.error]
    if any(r.run_id for r in results):
        print("\nMLflow: runs tagged zsclust.study='" + args.study + "'; open the UI with:  zsclust ui")
    return 1 if results and len(failed) == len(results) else 0


def cmd_sweep(args) -> int:
    from .sweep import format_status, load_sweep_config, run_sweep, sweep_status

    overrides = [*args.overrides, *(["embed.progress=false"] if args.no_progress else [])]
    cfg = load_sweep_config(args.config, overrides)
    if args.print_config:
        print(_config_yaml(cfg))
        return 0
    if args.status:
        print(format_status(sweep_status(cfg)))
        return 0
    summary = run_sweep(cfg, progress=not args.no_progress)
    if summary is None:  # not global zero: this process only helped embed
        return 0
    print()
    print(summary.format())
    if summary.ran:
        print(f"Tables and figures:  zsclust report {args.config}")
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


def _ks(value: str) -> list[int]:
    try:
        return [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks takes integers separated by commas, e.g. 1,10,20,100,200; got '{value}'") from None


def cmd_knn(args) -> int:
    from .config import load_config, to_yaml
    from .jobs import knn_probe

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.isfile(config):  # only overrides were given
        config, overrides = None, [config, *overrides]
    if args.no_progress:
        overrides.append("embed.progress=false")
    cfg = load_config(config, overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    out = knn_probe(cfg, ks=args.ks, temperature=args.temperature, device=args.device)
    if out is None:  # not global zero
        return 0
    result, tracker = out
    print(f"\nkNN probe: {cfg.encoder.name} on {cfg.data.name} (bank: train split, queries: {cfg.data.split} split)")
    if result.error:
        print(f"FAILED: {result.error}", file=sys.stderr)
        return 1
    for k, acc in result.accuracy.items():
        print(f"  k={k:<4d} accuracy {acc:.4f}")
    if tracker is not None and result.run_id:
        print(f"MLflow: run {result.run_id} in experiment '{tracker.experiment_name}' at {tracker.display_uri}")
    return 0


def cmd_report(args) -> int:
    from .config import load_config
    from .report import build_report, expected_from_sweep
    from .sweep import SweepConfig
    from .tracking import MLflowTracker

    expected = encoders = datasets = None
    uri, experiment = args.uri, args.experiment
    if args.config:
        cfg = load_config(args.config, args.overrides, schema=SweepConfig)
        if cfg.datasets is not None:
            expected, encoders, datasets = expected_from_sweep(cfg)
        uri = uri or cfg.tracking.uri
        experiment = experiment or cfg.tracking.experiment
    experiment = experiment or "zsclust"
    _require_experiment(uri, experiment)
    tracker = MLflowTracker(uri, experiment)
    out = args.out or os.path.join("reports", experiment)
    result = build_report(tracker, out, experiments=args.tuned_experiment, expected=expected, encoder_order=encoders,
                          dataset_order_hint=datasets, split=args.split, metric=args.metric, log=not args.no_log)
    print(f"Report on {result.n_rows} run(s) of experiment '{experiment}' ({args.split} split): "
          f"{len(result.files)} files in {result.out_dir}/ (start with report.md)")
    for method, rho in result.spearman.items():
        print(f"  Spearman rho(silhouette_umap50, {args.metric}) for {method}: "
              + ("n/a (needs 3+ encoder x dataset points that are not all equal)" if rho != rho else f"{rho:.3f}"))
    if result.missing:
        print(f"{len(result.missing)} expected job(s) have no finished run (see missing.md), e.g.:")
        for line in result.missing[:5]:
            print(f"  {line}")
    for note in result.notes:
        print(f"note: {note}")
    if result.run_id:
        print(f"Logged as artifacts of MLflow run {result.run_id} ('report ({args.split})').")
    return 0


def _require_experiment(uri, name: str) -> None:
    """A report reads an experiment; a mistyped name must not create an empty one."""
    from ._secrets import redact
    from .errors import ConfigError, did_you_mean
    from .tracking import resolve_tracking_uri, tracking_client

    uri = resolve_tracking_uri(uri)
    client = tracking_client(uri)  # a wrong URI: one clear line, not MLflow's traceback
    if client.get_experiment_by_name(name) is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError(f"No MLflow experiment '{name}' in {redact(uri)}.{did_you_mean(name, names)} "
                          f"Experiments there: {', '.join(names) or '(none)'}. Run 'zsclust sweep' first, or pass "
                          "--experiment / --uri.")


def cmd_ui(args) -> int:
    from .tracking import start_ui

    return start_ui(args.uri, args.host, args.port, experiment=args.experiment, open_browser=not args.no_browser)


def cmd_dashboard(args) -> int:
    from .tune import start_dashboard

    return start_dashboard(args.storage, args.host, args.port, study=args.study, open_browser=not args.no_browser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsclust", description=__doc__)
    parser.add_argument("--version", action="version", version=f"zsclust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed a dataset split with an encoder (cached, resumable, multi-GPU)")
    _add_embed_args(p)
    p.add_argument("--export", default=None, metavar="FILE.npz", help="also write embeddings/labels/indices to FILE.npz")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("run", help="embed (or use the cache), then every configured reducer x clusterer, tracked in MLflow")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config, or the name of one that ships with zsclust (quickstart); defaults if omitted")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. encoder.name=resnet50.tv_in1k clusterer=kmeans "
                                                 "clusterer.n_init=10")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and its jobs, and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("cluster", help="run the clustering pipeline on a cache entry or an exported .npz")
    p.add_argument("--embeddings", required=True, help="FILE.npz, or an embedding fingerprint (prefix) from 'zsclust cache'")
    p.add_argument("--config", default=None, help="YAML config for reducers, clusterers and tracking")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("tune", help="Optuna search on validation splits (one study per encoder x reducer x clusterer), "
                                     "shared by any number of workers, tracked in MLflow")
    p.add_argument("config", nargs="?", default=None,
                   help="tune YAML, or the name of one that ships with zsclust (tune/default); defaults if omitted")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. space.clusterer=hdbscan study.n_trials=100")
    p.add_argument("--embeddings", action="append", default=[], metavar="NAME=FILE.npz[:WEIGHT]",
                   help="tune on exported val embeddings instead of embedding datasets (repeat for several)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config(s) and exit")
    p.add_argument("--status", action="store_true", help="each study's trials (complete, running, failed, best so "
                                                         "far) from its storage, running nothing")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="apply a study's best params to the test split of each target dataset")
    p.add_argument("--study", required=True, help="study name (printed by zsclust tune)")
    p.add_argument("--storage", default=None, help="Optuna storage URL [sqlite:///mlruns/optuna.db]")
    p.add_argument("--embeddings", action="append", default=[], metavar="NAME=FILE.npz",
                   help="exported test embeddings of a target (repeat for several)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the study's config, e.g. evaluate.targets=[cifar10]")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="the grid encoders x datasets x clusterers: each cell embedded once, jobs in "
                                      "parallel processes, finished jobs skipped by their MLflow record")
    p.add_argument("config", help="sweep YAML, or the name of one that ships with zsclust (study/sweep, study/offline)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sweep.workers=4 embed.devices=4 'encoders=[resnet50.tv_in1k]'")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--status", action="store_true", help="list the cells with their finished and pending jobs, run nothing")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("knn", help="the study's weighted kNN probe: train split as the bank, test split as the "
                                    "queries, one MLflow run per encoder x dataset")
    p.add_argument("config", nargs="?", default=None,
                   help="run YAML (its encoder, data, embed and tracking sections), or a packaged name; defaults if omitted")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. encoder.name=resnet50.tv_in1k data.name=cifar10")
    p.add_argument("--ks", type=_ks, default=None, help="neighbour counts, comma-separated [1,10,20,100,200]")
    p.add_argument("--temperature", type=float, default=None, help="vote weight exp(similarity / T) [0.07]")
    p.add_argument("--device", default="auto", help="where the search runs: auto (CUDA when available), cpu, cuda:1 [auto]")
    p.add_argument("--no-progress", action="store_true", help="hide the embedding progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_knn)

    p = sub.add_parser("report", help="the study's tables (markdown, CSV, LaTeX) and figures from the MLflow record")
    p.add_argument("config", nargs="?", default=None,
                   help="the sweep YAML: its experiment, store and grid (to say what is missing)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the sweep config")
    p.add_argument("--experiment", default=None, help="MLflow experiment [the config's tracking.experiment]")
    p.add_argument("--tuned-experiment", action="append", default=[], metavar="NAME",
                   help="also read tuned runs (zsclust evaluate) from this experiment (repeat for several)")
    p.add_argument("--uri", default=None, help="tracking URI [the config's, $MLFLOW_TRACKING_URI, ./mlruns]")
    p.add_argument("--out", default=None, help="output folder [reports/<experiment>]")
    p.add_argument("--split", default="test", help="which split's runs to tabulate [test]")
    p.add_argument("--metric", default="ami", help="the score to tabulate [ami]; ari, nmi, accuracy, ...")
    p.add_argument("--no-log", action="store_true", help="write the folder only, not an MLflow run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="start the MLflow UI on the tracking store")
    p.add_argument("--uri", default=None, help="tracking URI [$MLFLOW_TRACKING_URI or ./mlruns/mlflow.db]")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--experiment", default=None, help="experiment whose runs table the link opens [the one with the latest run]")
    p.add_argument("--no-browser", action="store_true", help="print the link only, do not open a browser")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("dashboard", help="start optuna-dashboard on the study storage (pip install 'zsclust[dashboard]')")
    p.add_argument("--storage", default=None, help="Optuna storage URL [sqlite:///mlruns/optuna.db]")
    p.add_argument("--study", default=None, help="open this study's page")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--no-browser", action="store_true", help="print the link only, do not open a browser")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("encoders", help="list registered encoders: name, group, feature size, weights source")
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern, e.g. '*dino*'")
    p.add_argument("--markdown", action="store_true", help="the table of docs/encoders.md (with paper names and "
                   "preprocessing)")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("datasets", help="list registered datasets")
    p.add_argument("--group", default=None, help="in-domain, domain-shift, near-ood, fine-grained, far-ood, ...")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("cache", help="list complete embedding cache entries")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # dotted overrides given after an option (argparse stops filling positionals there)
        if getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ZsclustError as e:
        from ._secrets import redact_text

        print(f"zsclust: error: {redact_text(e.user_message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsclust: interrupted; finished shards are kept, rerun the same command to resume.", file=sys.stderr)
        return 130


def run() -> None:
    """The ``zsclust`` command: :func:`main`, then a fast process exit (see :func:`zsclust._exit.exit_process`)."""
    from ._exit import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()

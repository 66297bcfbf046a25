"""The kNN probe as a tracked job: one MLflow run per encoder × dataset, recognisable by its key.

The bank is the train split's embeddings and the queries are the test split's (study protocol §8).
The run carries a clustering run's tags (encoder, dataset, split, dataset.group,
embedding.fingerprint, zsclust.job) plus ``zsclust.role=knn``, and one metric per k,
``knn_accuracy_k{k}``. ``zsclust knn`` and a sweep with ``sweep.knn: true`` both log through
:func:`run_knn_job`, and they compute the same key, so each recognises the other's finished run.
``zsclust report`` correlates these accuracies with AMI.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from zsclust.errors import InvalidDataError, ZsclustError
from zsclust.knn._inputs import check_ks, check_temperature, resolve_device
from zsclust.knn._probe import DEFAULT_KS, DEFAULT_TEMPERATURE, knn_accuracy

ROLE = "knn"  # the runs' zsclust.role tag
BANK_SPLIT = "train"
METRIC_PREFIX = "knn_accuracy_k"


def metric_name(k: int) -> str:
    """``knn_accuracy_k20``: the MLflow metric of one k (a fraction in [0, 1])."""
    return f"{METRIC_PREFIX}{int(k)}"


def knn_job_key(identity: Mapping, ks=DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE) -> str:
    """The identity of one kNN job: what the query split is (a run identity), the bank split, ks and T.

    ``identity`` is :func:`zsclust._build.run_identity` of the query split's config. Its
    ``evaluation`` part is left out: the probe does not read it, so changing clustering scores
    does not redo the probe.
    """
    from zsclust._json import to_jsonable

    payload = {"kind": ROLE, "identity": to_jsonable({k: v for k, v in identity.items() if k != "evaluation"}),
               "bank_split": BANK_SPLIT, "ks": list(check_ks(ks)), "temperature": check_temperature(temperature)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class KnnResult:
    """One probe: accuracy per k (fractions), or the error that stopped it; ``run_id`` when tracked."""

    accuracy: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    run_id: str | None = None
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        return {**{metric_name(k): v for k, v in self.accuracy.items()}, "knn_seconds": self.seconds}


def run_knn_job(bank, queries, *, context: Mapping, key: str | None = None, tracker=None, ks=DEFAULT_KS,
                temperature: float = DEFAULT_TEMPERATURE, device=None) -> KnnResult:
    """Score the probe with ``bank`` (train) and ``queries`` (test) :class:`~zsclust.embed.EmbeddingSet`\\ s.

    ``context`` is the query split's run context (encoder.name, data.name, data.split, ...; see
    :func:`zsclust._build.run_context`). With a ``tracker`` the probe is one run; a failure is
    reported in the result and as a FAILED run with its reason, never raised, like a clustering job.
    """
    result = KnnResult()
    ks = check_ks(ks)
    temperature = check_temperature(temperature)
    run_id = None
    try:
        if tracker is not None:  # first, so that whatever fails below leaves a FAILED run with its reason
            run_id = tracker.start_run(_run_name(context), tags=_tags(context, bank, queries, key))
            result.run_id = run_id
        _check_pair(bank, queries)
        resolved = resolve_device(device, None)
        if tracker is not None:
            tracker.log_params(run_id, {**context, **_params(bank, queries, ks, temperature, resolved)})
            split = context.get("data.split")
            tracker.log_dataset(run_id, context.get("data.name", "?"), queries.fingerprint, len(queries), context=split)
            tracker.log_dataset(run_id, context.get("data.name", "?"), bank.fingerprint, len(bank), context=BANK_SPLIT)
        start = time.perf_counter()
        result.accuracy = knn_accuracy(bank.embeddings, bank.labels, queries.embeddings, queries.labels, ks=ks,
                                       temperature=temperature, device=resolved)
        result.seconds = time.perf_counter() - start
        if tracker is not None:
            tracker.log_metrics(run_id, result.metrics)
            tracker.set_tags(run_id, {_note_tag(): _description(context, result, bank, queries, temperature)})
            tracker.end_run(run_id)
    except Exception as e:  # noqa: BLE001 - reported like a failed clustering job, so a sweep goes on
        result.error = e.user_message if isinstance(e, ZsclustError) else f"{type(e).__name__}: {e}"
        if run_id is not None:
            tracker.set_tags(run_id, {"zsclust.error": result.error[:5000]})
            tracker.end_run(run_id, status="FAILED")
    return result


def _check_pair(bank, queries) -> None:
    """Both sets from one encoder, the bank from the train split: a mixed-up pair fails with names."""
    def encoder(s):
        return ((s.meta.get("encoder") or {}).get("name") or (s.meta.get("fingerprint_inputs") or {}).get("encoder"))

    if encoder(bank) and encoder(queries) and encoder(bank) != encoder(queries):
        raise InvalidDataError(f"kNN probe: the bank was embedded with {encoder(bank)} but the queries with "
                               f"{encoder(queries)}; embed both splits with the same encoder.")
    split = (bank.meta.get("dataset") or {}).get("split")
    if split and split != BANK_SPLIT:
        raise InvalidDataError(f"kNN probe: the bank must be the {BANK_SPLIT} split, got the {split} split "
                               f"({bank.fingerprint}).")
    if bank.fingerprint == queries.fingerprint:
        raise InvalidDataError(f"kNN probe: bank and queries are the same embeddings ({bank.fingerprint}); the "
                               "queries must be another split (test).")


def _run_name(c: Mapping) -> str:
    return f"{c.get('encoder.name', '?')}/{c.get('data.name', '?')}:{c.get('data.split', '?')}/knn"


def _tags(c: Mapping, bank, queries, key: str | None) -> dict:
    group = c.get("data.group") or (queries.meta.get("dataset") or {}).get("group") or "none"
    return {"encoder": c.get("encoder.name"), "dataset": c.get("data.name"), "split": c.get("data.split"),
            "dataset.group": group, "embedding.fingerprint": queries.fingerprint,
            "embedding.bank_fingerprint": bank.fingerprint, "zsclust.job": key, "zsclust.role": ROLE}


def _params(bank, queries, ks, temperature, device) -> dict:
    return {"knn.ks": ",".join(map(str, ks)), "knn.temperature": temperature, "knn.bank_split": BANK_SPLIT,
            "knn.bank_size": len(bank), "knn.queries": len(queries), "knn.device": str(device),
            "embedding.dim": int(queries.embeddings.shape[1])}


def _note_tag() -> str:
    from zsclust.tracking._describe import NOTE_TAG

    return NOTE_TAG


def _description(c: Mapping, result: KnnResult, bank, queries, temperature: float) -> str:
    ks = list(result.accuracy)
    return "\n".join([
        f"**{c.get('encoder.name', '?')}** on **{c.get('data.name', '?')}**: weighted kNN probe "
        f"({len(bank)} {BANK_SPLIT} embeddings as the bank, {len(queries)} {c.get('data.split', '?')} queries, "
        f"T = {temperature:g})", "",
        "| " + " | ".join(f"k={k}" for k in ks) + " |", "|" + "---|" * len(ks),
        "| " + " | ".join(f"{result.accuracy[k]:.1%}" for k in ks) + " |", "",
        f"embedding fingerprints: queries `{queries.fingerprint}`, bank `{bank.fingerprint}`"])

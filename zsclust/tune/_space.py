"""Search spaces: a ``reducer`` and a ``clusterer`` node from YAML, sampled with Optuna's define-by-run API.

Each leaf under ``reducer:``/``clusterer:`` (other than ``name``) is either a fixed value or a
distribution, and its dotted path is the Optuna parameter name and the MLflow param
(``clusterer.linkage``)::

    clusterer:
      name: agglomerative
      n_clusters: null                         # fixed
      linkage: {choices: [ward, average]}      # categorical
      distance_threshold: {low: 1.0e-3, high: 5.0e+3, log: true}   # float (int when low/high are ints)
      metric: {choices: [euclidean, cosine], if: {clusterer.linkage: [average]}, else: euclidean}

``if`` makes a parameter conditional on an earlier one (here: ward implies euclidean, so the metric is
only searched for the other linkages and is ``euclidean`` otherwise); without ``else`` the estimator's
default applies. ``n_clusters: K`` means the number of classes of each validation set (K known).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zsclust.config import K_KNOWN
from zsclust.errors import ConfigError, ZsclustError, did_you_mean

__all__ = ["Dimension", "SearchSpace", "K_KNOWN"]


GROUPS = ("reducer", "clusterer")
_DIST_KEYS = {"choices", "low", "high", "log", "step", "type", "if", "else"}
_MISSING = object()
_GRID_MAX_INTS = 200  # an int range up to this wide is enumerated for a grid search


@dataclass
class Dimension:
    """One searched parameter: its dotted key and an Optuna distribution, optionally conditional."""

    key: str
    kind: str  # categorical | int | float
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    condition: dict[str, list] = field(default_factory=dict)
    otherwise: Any = _MISSING  # value when the condition does not hold; _MISSING: estimator default

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step) if self.step else 1)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)

    def grid_values(self) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log and (self.high - self.low) / (self.step or 1) < _GRID_MAX_INTS:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ConfigError(f"study.sampler=grid needs finite choices, but '{self.key}' is a {self.kind} range "
                          f"[{self.low}, {self.high}]{' (log)' if self.log else ''}. Give it 'choices', or use "
                          "study.sampler=tpe.")

    def probes(self) -> list:
        """Values that exercise the distribution's edges, for the checks before any trial runs."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high] if self.kind == "float" else [int(self.low), int(self.high)]


class SearchSpace:
    """A validated ``{reducer: {...}, clusterer: {...}}`` space; see the module docstring for the format.

    ``suggest(trial)`` samples the searched keys in file order; ``build(params)`` turns sampled (or
    stored best) params into the reducer and clusterer specs that ``create_reducer`` and
    ``create_clusterer`` take.
    """

    def __init__(self, spec: Mapping, where: str = "space"):
        self.where = where
        from omegaconf import OmegaConf

        if OmegaConf.is_config(spec):
            spec = OmegaConf.to_container(spec, resolve=True)
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where} must be a mapping with 'reducer' and 'clusterer', got {spec!r}.")
        unknown = [k for k in spec if k not in GROUPS]
        if unknown:
            raise ConfigError(f"Unknown key '{where}.{unknown[0]}' in the search space: only 'reducer' and "
                              f"'clusterer' can be searched.{did_you_mean(str(unknown[0]), GROUPS)}")
        if "clusterer" not in spec or spec["clusterer"] is None:
            raise ConfigError(f"{where}.clusterer is missing: name a clusterer space, e.g. "
                              "space.clusterer=agglomerative (space/clusterer/ in zsclust's configs).")
        self.spec = {g: dict(spec.get(g) or {"name": "none"}) for g in GROUPS}
        self.fixed: dict[str, Any] = {}
        self.dimensions: list[Dimension] = []
        for group in GROUPS:
            node = self.spec[group]
            if not isinstance(node.get("name"), str):
                raise ConfigError(f"{where}.{group}.name must be a {group} name, got {node.get('name')!r}.")
            for key, value in node.items():
                dotted = f"{group}.{key}"
                if isinstance(value, Mapping) and ("choices" in value or "low" in value or "high" in value):
                    self.dimensions.append(self._parse_dimension(dotted, dict(value)))
                else:
                    self.fixed[dotted] = value
        if not self.dimensions:
            raise ConfigError(
                f"The search space {where} is empty: every parameter of {self.family('reducer')} and "
                f"{self.family('clusterer')} is fixed. Give at least one parameter a distribution, e.g. "
                "clusterer.n_init: {low: 1, high: 10}.")
        self._check_names()
        self._check_values()

    # -- parsing ---------------------------------------------------------------------------------
    def _parse_dimension(self, key: str, d: dict) -> Dimension:
        where = f"{self.where}.{key}"
        bad = sorted(set(d) - _DIST_KEYS)
        if bad:
            raise ConfigError(f"Unknown key '{bad[0]}' in distribution {where}; a distribution takes "
                              f"{', '.join(sorted(_DIST_KEYS))}.{did_you_mean(bad[0], _DIST_KEYS)}")
        cond = d.get("if") or {}
        if not isinstance(cond, Mapping):
            raise ConfigError(f"{where}.if must map an earlier key to its values, e.g. {{clusterer.linkage: [average]}}.")
        condition = {}
        for other, values in cond.items():
            earlier = {dim.key for dim in self.dimensions} | set(self.fixed)
            if other not in earlier:
                raise ConfigError(f"{where}.if refers to '{other}', which is not a parameter defined before "
                                  f"'{key}'. Conditions may only use earlier keys: {', '.join(sorted(earlier))}.")
            condition[str(other)] = list(values) if isinstance(values, (list, tuple)) else [values]
        otherwise = d.get("else", _MISSING)
        kind = d.get("type")
        if "choices" in d:
            choices = list(d["choices"]) if isinstance(d["choices"], (list, tuple)) else None
            if not choices:
                raise ConfigError(f"{where}.choices must be a non-empty list.")
            for c in choices:
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(f"{where}.choices may hold numbers, strings, booleans or null, got {c!r}.")
            if kind not in (None, "categorical"):
                raise ConfigError(f"{where}: 'choices' makes a categorical distribution, not type {kind}.")
            return Dimension(key, "categorical", choices=choices, condition=condition, otherwise=otherwise)
        if "low" not in d or "high" not in d:
            raise ConfigError(f"{where} needs both 'low' and 'high' (or 'choices').")
        low, high = d["low"], d["high"]
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}.{name} must be a number, got {v!r}.")
        if kind is None:
            kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(d.get("step"), float) else "float"
        if kind not in ("int", "float"):
            raise ConfigError(f"{where}.type must be int, float or categorical, got {kind!r}.")
        if not low < high:
            raise ConfigError(f"{where}: low ({low}) must be smaller than high ({high}).")
        log = bool(d.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}.")
        step = d.get("step")
        if step is not None and log:
            raise ConfigError(f"{where}: 'step' and 'log' cannot be combined (Optuna's rule).")
        return Dimension(key, kind, low=low, high=high, log=log, step=step, condition=condition, otherwise=otherwise)

    # -- checks before any trial -------------------------------------------------------------------
    def family(self, group: str) -> str:
        return str(self.spec[group]["name"])

    def _estimator(self, group: str, params: dict):
        from zsclust.cluster import create_clusterer, create_reducer

        if group == "reducer":
            return create_reducer({"name": self.family(group), **params})
        return create_clusterer({"name": self.family(group), **params})

    def _check_names(self) -> None:
        """Every key must be a parameter of its estimator: a typo fails here, not in trial 37."""
        for group in GROUPS:
            keys = [k.split(".", 1)[1] for k in self.keys(group)]
            try:
                est = self._estimator(group, {})
            except ZsclustError as e:
                raise ConfigError(f"{self.where}.{group}: {e}") from None
            valid = getattr(type(est), "_get_param_names", None)
            names = set(valid()) if valid is not None and type(est).__name__ != "ImportedClusterer" else None
            for key in keys:
                if names is not None and key not in names:
                    raise ConfigError(
                        f"Unknown parameter '{group}.{key}' in the search space {self.where}: "
                        f"{self.family(group)} has no parameter '{key}'.{did_you_mean(key, names)} "
                        f"Valid: {', '.join(sorted(names))}.")
            if names is None:  # an import path: let create_clusterer name the unknown ones
                try:
                    self._estimator(group, {k: self._probe_value(f"{group}.{k}") for k in keys})
                except ConfigError as e:
                    if "Invalid parameter" in str(e):
                        raise ConfigError(f"Unknown parameter in the search space {self.where}: {e}") from None

    def _probe_value(self, key: str):
        if key in self.fixed:
            v = self.fixed[key]
        else:
            v = next(d for d in self.dimensions if d.key == key).probes()[0]
        return 2 if key == "clusterer.n_clusters" and v == K_KNOWN else v

    def _check_values(self) -> None:
        """Each choice and range edge must pass the estimator's own parameter checks (alone)."""
        from zsclust.cluster._validation import _validate_sklearn_params

        for dim in self.dimensions:
            group, name = dim.key.split(".", 1)
            for value in dim.probes():
                if name == "n_clusters" and value == K_KNOWN:
                    continue
                try:
                    est = self._estimator(group, {})
                    if name == "n_clusters" and "distance_threshold" in est.get_params():
                        est.set_params(distance_threshold=None)
                    est.set_params(**{name: value})
                    _validate_sklearn_params(est, self.family(group))
                except ZsclustError as e:
                    raise ConfigError(f"{self.where}.{dim.key}: value {value!r} is invalid: {e}") from None
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"{self.where}.{dim.key}: value {value!r} is invalid: {e}") from None

    # -- use ---------------------------------------------------------------------------------------
    def keys(self, group: str | None = None) -> list[str]:
        keys = list(self.fixed) + [d.key for d in self.dimensions]
        keys = [k for k in keys if k not in ("reducer.name", "clusterer.name")]
        return [k for k in keys if group is None or k.startswith(group + ".")]

    @property
    def uses_k(self) -> bool:
        return self.fixed.get("clusterer.n_clusters") == K_KNOWN or any(
            d.key == "clusterer.n_clusters" and K_KNOWN in (d.choices or []) for d in self.dimensions)

    def _active(self, dim: Dimension, values: Mapping) -> bool:
        return all(values.get(k, _MISSING) in allowed for k, allowed in dim.condition.items())

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every active dimension on ``trial``; returns the sampled params (dotted keys)."""
        values: dict[str, Any] = dict(self.fixed)
        params = {}
        for dim in self.dimensions:
            if self._active(dim, values):
                params[dim.key] = values[dim.key] = dim.suggest(trial)
            elif dim.otherwise is not _MISSING:
                values[dim.key] = dim.otherwise
        return params

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sampled params plus the fixed values and the ``else`` of inactive dimensions (dotted keys)."""
        values: dict[str, Any] = dict(self.fixed)
        for dim in self.dimensions:
            if self._active(dim, values) and dim.key in params:
                values[dim.key] = params[dim.key]
            elif not self._active(dim, values) and dim.otherwise is not _MISSING:
                values[dim.key] = dim.otherwise
        return values

    def build(self, params: Mapping[str, Any]) -> tuple[dict, dict]:
        """(reducer spec, clusterer spec) for ``create_reducer``/``create_clusterer``."""
        values = self.resolve(params)
        specs = {g: {} for g in GROUPS}
        for key, value in values.items():
            group, name = key.split(".", 1)
            specs[group][name] = value
        return specs["reducer"], specs["clusterer"]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the (finite) dimensions, conditions honoured: for ``study.sampler=grid``."""
        combos: list[dict[str, Any]] = [{}]
        for dim in self.dimensions:
            values = dim.grid_values()
            nxt = []
            for combo in combos:
                if self._active(dim, {**self.fixed, **combo}):
                    nxt += [{**combo, dim.key: v} for v in values]
                else:
                    nxt.append(combo)
            combos = nxt
        return combos

    def describe(self) -> dict:
        """The space as given (JSON-able), stored with the study so that a resumed study can be checked."""
        return {g: dict(self.spec[g]) for g in GROUPS}


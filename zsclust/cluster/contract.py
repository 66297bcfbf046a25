"""The contract every registered reducer and clusterer meets, as checks a test suite runs.

Like scikit-learn's ``parametrize_with_checks`` (and timm's tests over ``list_models()``), the checks
are generated from the registry, so a newly registered estimator is tested without anyone writing a
test for it: the class carries what the checks need (``test_params`` for small data, its
``known_answers``, its ``fit_memory`` estimate)::

    from zsclust.cluster.contract import parametrize_with_checks

    @parametrize_with_checks()             # every registered clusterer and reducer
    def test_contract(check):
        check()

Register your own estimator (``register_clusterer``) and run the same checks on it with
``parametrize_with_checks(clusterers=["mine"], reducers=[])``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np

__all__ = ["clusterer_checks", "reducer_checks", "parametrize_with_checks", "blobs"]


def blobs(n: int = 240, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated blobs: every clusterer's known answers must recover them exactly."""
    from sklearn.datasets import make_blobs

    return make_blobs(n_samples=n, centers=4, n_features=d, cluster_std=0.5, random_state=seed)


def _clusterer(name: str, **params):
    from ._clusterers import create_clusterer, registered_class

    est = create_clusterer(name, **{**registered_class(name)._zs_test_params, **params})
    if "random_state" in est.get_params() and est.get_params()["random_state"] is None:
        est.set_params(random_state=0)
    return est


# -- clusterers --------------------------------------------------------------------------------------


def check_params_round_trip(name: str) -> None:
    """``get_params``/``set_params``/``clone``/``repr`` behave as scikit-learn's contract says."""
    from sklearn.base import clone

    est = _clusterer(name)
    params = est.get_params(deep=False)
    twin = clone(est)
    assert twin is not est and twin.get_params(deep=False) == params
    assert type(est)(**params).get_params(deep=False) == params
    assert repr(type(est)(**params)) == repr(est)
    key = next(iter(params))
    assert clone(est).set_params(**{key: params[key]}).get_params(deep=False)[key] == params[key]


def check_fit_predict(name: str) -> None:
    """Fit returns self, labels one per sample, a clone refits to the same labels, pickling keeps them."""
    from sklearn.base import clone

    X = blobs()[0][:60]
    est = _clusterer(name)
    twin = clone(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert est.fit(X) is est
        assert est.labels_.shape == (60,)
        assert np.array_equal(clone(est).fit_predict(X), est.labels_)
    assert np.array_equal(pickle.loads(pickle.dumps(est)).labels_, est.labels_)
    assert not hasattr(twin, "labels_")


def check_known_answer(name: str, case: str) -> None:
    """The case's parameters recover four well-separated blobs exactly (AMI > 0.99)."""
    from sklearn.metrics import adjusted_mutual_info_score

    from ._clusterers import create_clusterer, registered_class

    X, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral: "graph is not fully connected" on separated blobs
        labels = create_clusterer(name, **registered_class(name)._zs_known_answers[case]).fit_predict(X)
    assert labels.shape == y.shape
    assert adjusted_mutual_info_score(y, labels) > 0.99, (name, case)


def check_refuses_bad_input(name: str) -> None:
    """NaN rows and fewer than two samples are InvalidDataErrors that say what is wrong."""
    from zsclust.errors import InvalidDataError

    X = blobs()[0][:60].copy()
    X[[3, 7]] = np.nan
    for bad, words in ((X, "2 of 60 rows contain NaN"), (X[:1], "at least 2 samples")):
        try:
            _clusterer(name).fit(bad)
        except InvalidDataError as e:
            assert words in str(e), str(e)
        else:
            raise AssertionError(f"{name} accepted bad input ({words})")


def check_memory_estimate(name: str, kind: str = "clusterer") -> None:
    """The estimator estimates its own peak memory, and the guard refuses a fit whose estimate is over budget."""
    from zsclust.errors import MemoryGuardError

    from ._memory import ENV_LIMIT, check_fit_memory, estimate_fit_bytes

    est = _clusterer(name) if kind == "clusterer" else _reducer(name)
    small, _ = estimate_fit_bytes(est, 1_000, 8)
    big, why = estimate_fit_bytes(est, 200_000, 8)
    assert isinstance(big, int) and isinstance(why, str) and why, (name, big, why)
    assert 0 < small < big, (name, small, big)
    old = os.environ.get(ENV_LIMIT)
    os.environ[ENV_LIMIT] = str(big)  # 80% of it may be used: the full-size fit must be refused
    try:
        assert check_fit_memory(est, 1_000, 8) == small
        try:
            check_fit_memory(est, 200_000, 8, name=name)
        except MemoryGuardError as e:
            assert why in str(e), str(e)
        else:
            raise AssertionError(f"the memory guard let {name} plan {big} bytes with a budget of 80% of that")
    finally:
        if old is None:
            os.environ.pop(ENV_LIMIT, None)
        else:
            os.environ[ENV_LIMIT] = old


def clusterer_checks(name: str) -> list[tuple[str, Callable[[], None]]]:
    """(label, check) for every contract check of a registered clusterer."""
    from ._clusterers import registered_class

    checks = [("params", partial(check_params_round_trip, name)), ("fit_predict", partial(check_fit_predict, name)),
              ("bad_input", partial(check_refuses_bad_input, name)),
              ("memory", partial(check_memory_estimate, name, "clusterer"))]
    checks += [(f"known_answer[{case}]", partial(check_known_answer, name, case))
               for case in registered_class(name)._zs_known_answers]
    return checks


# -- reducers ----------------------------------------------------------------------------------------


def _reducer(name: str):
    from ._reducers import _resolve, create_reducer

    cls = _resolve(name)[0]
    return create_reducer({"name": name, **cls._zs_test_params}) if name != "none" else create_reducer(name)


def check_reducer_round_trip(name: str) -> None:
    """Params round-trip, the canonical key is the same for a spec and its estimator, and fit keeps N rows."""
    import json

    from sklearn.base import clone

    from ._reducers import reducer_key

    est = _reducer(name)
    params = est.get_params(deep=False)
    assert clone(est).get_params(deep=False).keys() == params.keys()
    assert repr(type(est)(**params)) == repr(est)
    json.dumps(reducer_key(est))
    X = blobs(n=120)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = np.asarray(_reducer(name).fit_transform(X))
    assert out.shape[0] == 120 and np.isfinite(out).all()


def reducer_checks(name: str) -> list[tuple[str, Callable[[], None]]]:
    return [("round_trip", partial(check_reducer_round_trip, name)),
            ("memory", partial(check_memory_estimate, name, "reducer"))]


def parametrize_with_checks(clusterers=None, reducers=None):
    """A ``pytest.mark.parametrize`` over ``check`` for the named estimators (default: every registered one)."""
    import pytest

    from ._clusterers import list_clusterers
    from ._reducers import list_reducers

    clusterers = list_clusterers() if clusterers is None else list(clusterers)
    reducers = list_reducers() if reducers is None else list(reducers)
    cases = [(f"{n}-{label}", c) for n in clusterers for label, c in clusterer_checks(n)]
    cases += [(f"reducer:{n}-{label}", c) for n in reducers for label, c in reducer_checks(n)]
    return pytest.mark.parametrize("check", [c for _, c in cases], ids=[i for i, _ in cases])

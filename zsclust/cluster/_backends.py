"""What the ``backend`` parameter of a registered clusterer is made of (shared by K-Means, agglomerative, HDBSCAN).

A backend mixin sits before :class:`~zsclust.cluster.GuardedClusterMixin` in the class's bases and
declares its extra parameters in ``_zs_extra_params`` (name → default). :class:`ExtraParamsMixin` makes
them ordinary scikit-learn parameters (``get_params``, ``set_params``, ``clone``, configs, MLflow params)
without restating the wrapped estimator's ``__init__``. :func:`with_backends`, applied above
``register_clusterer``, routes the class's ``fit_memory`` through the mixin (the memory guard then sees
the memory of the path that will run) and adds the mixin's known answers to the contract checks, so
every backend that runs on the CPU is tested over the registry like the rest.

The backend that ran is the fitted attribute ``backend_``; :func:`zsclust.cluster.run_job` records it
as the run's ``clusterer.backend_`` param.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from zsclust.errors import ConfigError


class ExtraParamsMixin:
    """Adds ``_zs_extra_params`` (name → default) to a scikit-learn estimator's parameters.

    Each concrete subclass gets an ``__init__`` whose signature is the wrapped estimator's plus the extra
    parameters (keyword-only), so ``get_params``, ``clone`` and ``repr`` work as for any scikit-learn
    estimator. A subclass that writes its own ``__init__`` must accept the extra parameters itself.
    """

    _zs_extra_params: dict[str, Any] = {}

    def __init__(self, **params):
        extra = {name: params.pop(name, default) for name, default in self._zs_extra_params.items()}
        super().__init__(**params)
        for name, value in extra.items():
            setattr(self, name, value)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        extra = {}
        for k in reversed(cls.__mro__):
            extra.update(vars(k).get("_zs_extra_params", {}))
        cls._zs_extra_params = extra  # every class's extras, its bases' included: what __init__ pops
        if "__init__" in vars(cls):
            return
        owner = next((k for k in cls.__mro__[1:] if "__init__" in vars(k) and not issubclass(k, ExtraParamsMixin)),
                     object)
        if owner is object:  # a mixin on its own: nothing to wrap yet
            return
        base = inspect.signature(owner.__init__)
        positional = [p.name for p in base.parameters.values()
                      if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        params = list(base.parameters.values()) + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default) for name, default in extra.items()
            if name not in base.parameters]

        def __init__(self, *args, **kwargs):
            if len(args) > len(positional):
                raise TypeError(f"{cls.__name__}() takes at most {len(positional)} positional arguments")
            kwargs.update(zip(positional, args))
            ExtraParamsMixin.__init__(self, **kwargs)

        __init__.__signature__ = base.replace(parameters=params)
        __init__.__doc__ = owner.__init__.__doc__
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__



class BackendMixin(ExtraParamsMixin):
    """``fit`` for an estimator with a ``backend`` parameter: check, pick the path (``_choose_backend(n, d)``),
    run it (scikit-learn's own ``fit``, or the mixin's ``_fit_<backend>(X)``) and record it as ``backend_``."""

    def _fit_backend(self, X: np.ndarray, fit_params: dict) -> str:
        """The backend this fit runs on. Override where fit arguments narrow the choice."""
        return self._choose_backend(*X.shape)

    def fit(self, X, y=None, **fit_params):
        """Check parameters, input and memory (of the path that will run), then cluster. Returns self."""
        X = self._prepare_fit(X)
        backend = self._fit_backend(X, fit_params)
        if backend == "sklearn":
            type(self).algorithm().fit(self, X, y, **fit_params)
        else:
            run = getattr(self, f"_fit_{backend}", None)
            if run is None:  # pragma: no cover - the parameter constraints refuse other values first
                raise ConfigError(f"{self._display_name()}: unknown backend {backend!r}.")
            run(X)
        self.backend_ = backend
        return self

def with_backends(cls):
    """Class decorator (above ``register_clusterer``): the class's ``fit_memory`` asks its backend mixin
    (``_backend_fit_memory(n, d, reference)``, where ``reference`` is the class's own estimate for the
    scikit-learn path), and the mixin's ``_zs_backend_known_answers`` join the contract checks."""
    reference = cls.fit_memory

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        if not hasattr(self, "_backend_fit_memory"):  # the plain scikit-learn estimator, given by import path
            return reference(self, int(n), int(d))
        return self._backend_fit_memory(int(n), int(d), lambda n_, d_: reference(self, n_, d_))

    fit_memory.__doc__ = (f"Peak bytes of fitting on (n, d) by the backend that would run: "
                          f"{cls.__name__}'s own estimate for scikit-learn, the backend's otherwise.")
    cls.fit_memory = fit_memory
    cls._zs_reference_fit_memory = reference
    answers = dict(getattr(cls, "_zs_known_answers", {}))
    answers.update(getattr(cls, "_zs_backend_known_answers", {}))
    cls._zs_known_answers = answers
    return cls


__all__ = ["BackendMixin", "ExtraParamsMixin", "with_backends"]

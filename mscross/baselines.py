"""Non-deep reference baselines, scored with the project's own metrics: CCA and semantic matching.

Both take already transformed splits ("train", "validation", "test" -> `mscross.data.Split`),
fit on train, choose their one hyperparameter on VALIDATION by `select_metric` (test never takes
part in the choice) and score test once with the chosen value. Every metrics dict is exactly what
`mscross.metrics.retrieval_metrics` returns for the embeddings below, so the figures compare
directly with the trained models'. Retrieval ranks by cosine similarity.

CCA (Hotelling 1936), `cca_baseline`. For two views with centred train features X (N x p) and
Y (N x q), the k-th canonical pair (a_k, b_k) maximises corr(X a, Y b) subject to X a and Y b
being uncorrelated with the earlier variates X a_j, Y b_j (j < k); rho_k = corr(X a_k, Y b_k) is
the k-th canonical correlation, rho_1 >= rho_2 >= ... An item is embedded by its first n
canonical variates ((x - mean_train) a_1, ..., (x - mean_train) a_n) (b for the other view),
with unit train variance; n is chosen on validation from `dims`.
- Whitening: each view is first centred and mapped onto its principal components with singular
  value above `RANK_TOL` times the largest, each scaled to unit train variance. CCA is invariant
  to invertible linear maps of either view, so this changes nothing but drops the directions in
  which a view is (numerically) constant, e.g. Wikipedia's topic proportions, which sum to 1;
  the number of directions kept is the view's rank, and no dimension exceeds the smallest rank.
- Solvers (`solver`): "svd" (default), exact: a_k, b_k are the singular vectors of the
  whitened views' cross-covariance and rho_k its singular values, one SVD for all n.
  "nipals": scikit-learn's `CCA` (NIPALS power iterations, deflation in canonical mode) with a
  tighter tolerance than its default, so that close correlations are told apart; it gives the
  same variates up to that tolerance but takes some ten seconds for 64 components of UCI mfeat
  (fou/pix), where "svd" takes milliseconds. Either way the components come one after another,
  so the first n of a fit do not depend on how many follow: one fit at the largest n of the
  grid serves every n.
- Scaling of the variates (`scaling`), the same for both views, before the cosine:
  "plain" (default): the unit-variance canonical variates as they are;
  "weighted": variate k times rho_k ** `CORRELATION_POWER`, which stresses the well-correlated
  directions (the eigenvalue weighting of Gong et al. 2014); often the stronger variant.
- K > 2 views: one CCA per PAIR of views, each pair's two directions scored on that pair's own
  canonical space, one n for all pairs; "avg_<metric>" is the mean over all K (K - 1)
  directions. A K-view generalisation (one shared space, e.g. MCCA) is not implemented.
- Works without labels (instance-level metrics).

Semantic matching, SM (Rasiwasia et al. 2010), `semantic_matching_baseline`. Per view, a
multinomial logistic regression (scikit-learn `LogisticRegression`, lbfgs, L2 penalty of inverse
strength C, one C for all views) maps the view's features, as the caller transformed them, to
the classes seen in training; every
item of every view is embedded by its vector of class posteriors P(class | x) (`predict_proba`),
and items are ranked by the COSINE similarity of these vectors (the original paper compared
several similarity measures; cosine is the one every metric here uses). C is chosen on
validation from `cs`. Single-label data only: the semantic space is the probability simplex of
one class per item; multi-label or unlabelled data raise ConfigError.

Selection: the candidate with the best validation `select_metric` wins ("avg_map" by default;
higher is better, lower for the rank metrics median_rank and mean_rank); ties go to the smaller
dimension / smaller C, NaN scores never win. Both baselines are deterministic; solver
non-convergence is counted in "convergence_warnings" instead of being printed.

References:
  H. Hotelling, "Relations between two sets of variates", Biometrika 28(3/4), 1936.
  N. Rasiwasia, J. Costa Pereira, E. Coviello, G. Doyle, G. R. G. Lanckriet, R. Levy,
  N. Vasconcelos, "A new approach to cross-modal multimedia retrieval", ACM MM 2010.
  Y. Gong, Q. Ke, M. Isard, S. Lazebnik, "A multi-view embedding space for modeling internet
  images, tags, and their semantics", IJCV 106(2), 2014.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mscross.data import Split
from mscross.errors import ConfigError, DataError
from mscross.metrics import direction_names, retrieval_metrics

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_DIMS = (2, 4, 8, 10, 16, 32, 64)
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)
SCALINGS = ("plain", "weighted")
CCA_SOLVERS = ("svd", "nipals")
CORRELATION_POWER = 4
RANK_TOL = 1e-6
# scikit-learn's default tol (1e-6 on the squared change of the weights) stops the power method
# before close canonical correlations are separated; these settle them to about 1e-6.
CCA_TOL = 1e-12
CCA_MAX_ITER = 20_000
LOGISTIC_MAX_ITER = 2_000
EVAL_KEYS = ("ks", "map_ks", "recall_ks", "block_size")
# Rank metrics are better when smaller; every other metric when larger.
LOWER_IS_BETTER = ("median_rank", "mean_rank")


def cca_baseline(
  splits: Mapping[str, Split],
  *,
  dims: Sequence[int] = DEFAULT_DIMS,
  scaling: str = "plain",
  solver: str = "svd",
  select_metric: str = "avg_map",
  eval_kwargs: Mapping[str, Any] | None = None,
  seed: int = 0,
) -> dict:
  """CCA retrieval (module docstring), its dimension chosen on validation.

  Args:
    splits: "train", "validation", "test" -> transformed `Split`s with the same modalities.
    dims: candidate dimensions; each is clipped to the largest possible, the smallest rank of
      a whitened view, and the clipped values deduplicated.
    scaling: "plain" or "weighted" (module docstring).
    solver: "svd" or "nipals" (module docstring).
    select_metric: key of the validation metrics that chooses the dimension.
    eval_kwargs: keyword arguments of `retrieval_metrics` (ks, map_ks, recall_ks, block_size).
    seed: unused (both solvers are deterministic); taken so both baselines share one signature.

  Returns:
    {"method": "cca", "scaling", "solver", "chosen": {"dim": n}, "val": metrics, "test":
    metrics, "search": [{"dim": n, "val_<select_metric>": score}, ...], "correlations":
    {"<a>-<b>": train canonical correlations rho_1..rho_n of each view pair},
    "convergence_warnings", "fit_seconds" (whitening and CCA fits, metrics excluded)}.

  Raises:
    ConfigError: bad dims, scaling, solver, select_metric or eval_kwargs.
    DataError: splits missing, inconsistent or non-finite; a constant view.
  """
  del seed
  if scaling not in SCALINGS:
    raise ConfigError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
  if solver not in CCA_SOLVERS:
    raise ConfigError(f"solver must be one of {', '.join(CCA_SOLVERS)}, got {solver!r}")
  modalities, labels = _check_splits(splits)
  kwargs = _check_eval_kwargs(eval_kwargs)
  wanted = _positive(dims, "dims", int)

  from threadpoolctl import threadpool_limits

  start = time.perf_counter()
  with threadpool_limits(1):  # see _fit_quietly
    train = splits["train"].features
    whiteners = {m: _Whitener.fit(train[m], m) for m in modalities}
    white = {
      name: {m: whiteners[m](splits[name].features[m]) for m in modalities} for name in SPLIT_NAMES
    }
    pairs = list(itertools.combinations(modalities, 2))
    grid = sorted({min(n, min(w.rank for w in whiteners.values())) for n in wanted})
    spaces, warned = {}, 0
    for a, b in pairs:
      fit = _CanonicalSpace.fit_svd if solver == "svd" else _CanonicalSpace.fit_nipals
      spaces[a, b], count = fit(white["train"][a], white["train"][b], grid[-1])
      warned += count
  fit_seconds = time.perf_counter() - start

  def evaluate(name: str, n: int) -> dict[str, float]:
    embedded = {
      (a, b): spaces[a, b].project(white[name][a], white[name][b], n, scaling) for a, b in pairs
    }
    return _pairwise_metrics(embedded, modalities, labels[name], kwargs)

  best, val, search = _select(grid, lambda n: evaluate("validation", n), select_metric, "dim")
  return {
    "method": "cca",
    "scaling": scaling,
    "solver": solver,
    "chosen": {"dim": best},
    "val": val,
    "test": evaluate("test", best),
    "search": search,
    "correlations": {f"{a}-{b}": spaces[a, b].rho[:best].tolist() for a, b in pairs},
    "convergence_warnings": warned,
    "fit_seconds": fit_seconds,
  }


def semantic_matching_baseline(
  splits: Mapping[str, Split],
  *,
  cs: Sequence[float] = DEFAULT_CS,
  select_metric: str = "avg_map",
  eval_kwargs: Mapping[str, Any] | None = None,
  seed: int = 0,
  keep_embeddings: bool = False,
) -> dict:
  """Semantic matching (module docstring), its regularisation C chosen on validation.

  Args:
    splits: "train", "validation", "test" -> transformed, single-label `Split`s with the same
      modalities.
    cs: candidate inverse regularisation strengths C of the logistic regressions.
    select_metric: key of the validation metrics that chooses C.
    eval_kwargs: keyword arguments of `retrieval_metrics` (ks, map_ks, recall_ks, block_size).
    seed: `random_state` of the logistic regressions.
    keep_embeddings: also return what was ranked at the chosen C.

  Returns:
    {"method": "sm", "chosen": {"C": c}, "val": metrics, "test": metrics, "search": [{"C": c,
    "val_<select_metric>": score}, ...], "convergence_warnings", "fit_seconds" (all logistic
    regression fits, metrics excluded)}; with `keep_embeddings` also "embeddings":
    {"validation" | "test": {modality: predicted class distributions [N, C]}}.

  Raises:
    ConfigError: unlabelled or multi-label data; bad cs, select_metric or eval_kwargs.
    DataError: splits missing, inconsistent or non-finite; fewer than two classes in train.
  """
  modalities, labels = _check_splits(splits)
  if labels["train"] is None:
    raise ConfigError("semantic matching needs class labels, but the data is unlabelled")
  train_labels = labels["train"]
  if not (np.isin(train_labels, (0.0, 1.0)).all() and (train_labels.sum(axis=1) == 1).all()):
    raise ConfigError(
      "semantic matching needs single-label data (one class per item); the train labels are "
      "multi-label or have unlabelled rows"
    )
  classes = train_labels.argmax(axis=1)
  if len(np.unique(classes)) < 2:
    raise DataError("semantic matching needs at least two classes in the train split")
  kwargs = _check_eval_kwargs(eval_kwargs)
  grid = sorted(set(_positive(cs, "cs", float)))

  from sklearn.linear_model import LogisticRegression

  fit_seconds, warned, fitted = 0.0, 0, {}

  def models(c: float) -> dict[str, Any]:
    nonlocal fit_seconds, warned
    if c not in fitted:
      start = time.perf_counter()
      fitted[c] = {}
      for m in modalities:
        model = LogisticRegression(C=c, max_iter=LOGISTIC_MAX_ITER, random_state=seed)
        warned += _fit_quietly(model, splits["train"].features[m], classes)
        fitted[c][m] = model
      fit_seconds += time.perf_counter() - start
    return fitted[c]

  def probabilities(name: str, c: float) -> dict[str, np.ndarray]:
    features = splits[name].features
    return {m: model.predict_proba(features[m]) for m, model in models(c).items()}

  def evaluate(name: str, c: float) -> dict[str, float]:
    return retrieval_metrics(probabilities(name, c), labels[name], **kwargs)

  best, val, search = _select(grid, lambda c: evaluate("validation", c), select_metric, "C")
  result = {
    "method": "sm",
    "chosen": {"C": best},
    "val": val,
    "test": evaluate("test", best),
    "search": search,
    "convergence_warnings": warned,
    "fit_seconds": fit_seconds,
  }
  if keep_embeddings:
    result["embeddings"] = {name: probabilities(name, best) for name in ("validation", "test")}
  return result


class _Whitener:
  """Whitens one view on train: centres it and maps it onto its numerically full-rank principal
  components, each scaled to unit variance (so the train features have identity covariance)."""

  def __init__(self, mean: np.ndarray, matrix: np.ndarray):
    self.mean, self.matrix = mean, matrix

  @property
  def rank(self) -> int:
    return self.matrix.shape[1]

  @classmethod
  def fit(cls, x: np.ndarray, name: str) -> _Whitener:
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    if s.size == 0 or s[0] == 0:
      raise DataError(f"CCA: the train features of {name!r} are constant")
    keep = s > RANK_TOL * s[0]
    return cls(mean, vt[keep].T * (math.sqrt(len(x) - 1) / s[keep]))

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) - self.mean) @ self.matrix


class _CanonicalSpace:
  """Two-view CCA on whitened views: their first canonical variates and correlations."""

  def __init__(self, transform: Callable, rho: np.ndarray):
    self.transform, self.rho = transform, rho

  @classmethod
  def fit_svd(cls, x: np.ndarray, y: np.ndarray, n: int) -> tuple[_CanonicalSpace, int]:
    """Exact: the singular vectors of the cross-covariance of the whitened views."""
    p, rho, rt = np.linalg.svd(x.T @ y / (len(x) - 1), full_matrices=False)
    a, b = p[:, :n], rt[:n].T
    return cls(lambda u, v: (u @ a, v @ b), np.clip(rho[:n], 0.0, 1.0)), 0

  @classmethod
  def fit_nipals(cls, x: np.ndarray, y: np.ndarray, n: int) -> tuple[_CanonicalSpace, int]:
    """scikit-learn's CCA; the correlations are measured on its train variates."""
    from sklearn.cross_decomposition import CCA

    model = CCA(n_components=n, max_iter=CCA_MAX_ITER, tol=CCA_TOL)
    warned = _fit_quietly(model, x, y)
    u, v = model.transform(x, y)
    u, v = u - u.mean(axis=0), v - v.mean(axis=0)
    norms = np.linalg.norm(u, axis=0) * np.linalg.norm(v, axis=0)
    # A component left at zero (scikit-learn stops early when a view runs out of directions)
    # has no correlation; it stays zero and adds nothing to a cosine.
    rho = np.divide((u * v).sum(axis=0), norms, out=np.zeros(n), where=norms > 0)
    return cls(model.transform, rho), warned

  def project(
    self, x: np.ndarray, y: np.ndarray, n: int, scaling: str
  ) -> tuple[np.ndarray, np.ndarray]:
    """The first n canonical variates of whitened x and y, scaled as `scaling` says."""
    u, v = (z[:, :n] for z in self.transform(x, y))
    if scaling == "weighted":
      weight = np.clip(self.rho[:n], 0.0, None) ** CORRELATION_POWER
      u, v = u * weight, v * weight
    return u, v


def _fit_quietly(model, x: np.ndarray, y: np.ndarray) -> int:
  """Fits `model` single-threaded; returns how many solver warnings it raised, passes others on.

  One BLAS thread: the matrices are too small for threads to pay, and busy-waiting BLAS threads
  made these fits some 40 times slower on a loaded two-core machine.
  """
  from sklearn.exceptions import ConvergenceWarning
  from threadpoolctl import threadpool_limits

  with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
    # "always": a repeated message would otherwise be recorded once per process only.
    warnings.simplefilter("always")
    model.fit(x, y)
  count = 0
  for w in caught:
    # scikit-learn's CCA says "y residual is constant" when a view runs out of directions.
    if issubclass(w.category, ConvergenceWarning) or "residual is constant" in str(w.message):
      count += 1
    else:
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  return count


def _check_splits(splits: Mapping[str, Split]) -> tuple[tuple[str, ...], dict]:
  """(modalities, split name -> labels or None) of consistent, finite splits."""
  missing = [name for name in SPLIT_NAMES if name not in splits]
  if missing:
    raise DataError(f"baselines need the splits {', '.join(SPLIT_NAMES)}; missing {missing}")
  modalities = splits["train"].modalities
  if len(modalities) < 2:
    raise DataError(f"cross-modal retrieval needs 2 or more modalities, got {list(modalities)}")
  widths = {m: np.shape(x)[1:] for m, x in splits["train"].features.items()}
  labelled = splits["train"].label is not None
  for name in SPLIT_NAMES:
    split = splits[name]
    if split.modalities != modalities:
      raise DataError(
        f"the {name} split has modalities {list(split.modalities)}, train has {list(modalities)}"
      )
    if (split.label is not None) != labelled:
      raise DataError("either every split has labels or none has")
    for m, x in split.features.items():
      if np.ndim(x) != 2 or np.shape(x)[1:] != widths[m]:
        raise DataError(f"{name} {m!r} features have shape {np.shape(x)}; train has {widths[m]}")
      if not np.isfinite(x).all():
        raise DataError(f"{name} {m!r} features hold NaN or infinite values")
    if len(split) < 2:
      raise DataError(f"the {name} split has {len(split)} items; baselines need at least 2")
  return modalities, {name: splits[name].label for name in SPLIT_NAMES}


def _check_eval_kwargs(eval_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
  kwargs = dict(eval_kwargs or {})
  unknown = sorted(set(kwargs) - set(EVAL_KEYS))
  if unknown:
    raise ConfigError(f"eval_kwargs {unknown} unknown; valid keys: {', '.join(EVAL_KEYS)}")
  return kwargs


def _positive(values: Sequence, what: str, kind: type) -> list:
  values = list(values)
  ok = all(
    isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
  )
  if not values or not ok or any(not (math.isfinite(v) and v > 0) for v in values):
    raise ConfigError(f"{what} must be a non-empty sequence of positive numbers, got {values}")
  if kind is int and any(v != int(v) for v in values):
    raise ConfigError(f"{what} must hold whole numbers, got {values}")
  return [kind(v) for v in values]


def _select(
  grid: Sequence, evaluate: Callable[[Any], dict[str, float]], select_metric: str, name: str
) -> tuple[Any, dict[str, float], list[dict]]:
  """(best candidate, its validation metrics, the search record) by validation select_metric."""
  lower = select_metric.endswith(LOWER_IS_BETTER)
  best, best_metrics, best_score, search = None, None, math.nan, []
  for value in grid:
    metrics = evaluate(value)
    if select_metric not in metrics:
      available = ", ".join(k for k in metrics if k.startswith("avg_"))
      raise ConfigError(f"select_metric {select_metric!r} is not a metric; e.g. {available}")
    score = float(metrics[select_metric])
    search.append({name: value, f"val_{select_metric}": score})
    better = score < best_score if lower else score > best_score
    if best is None or (not math.isnan(score) and (math.isnan(best_score) or better)):
      best, best_metrics, best_score = value, metrics, score
  if math.isnan(best_score):
    raise DataError(f"validation {select_metric} is NaN for every candidate; nothing to choose")
  return best, best_metrics, search


def _pairwise_metrics(
  pair_embeddings: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
  modalities: Sequence[str],
  labels: np.ndarray | None,
  kwargs: Mapping[str, Any],
) -> dict[str, float]:
  """`retrieval_metrics` of K views whose pairs each live in their own space, same keys/order."""
  if len(modalities) == 2:
    (((a, b), (za, zb)),) = pair_embeddings.items()
    return retrieval_metrics({a: za, b: zb}, labels, **kwargs)
  per_direction = {}
  for (a, b), (za, zb) in pair_embeddings.items():
    both = retrieval_metrics({a: za, b: zb}, labels, **kwargs)
    for prefix, pair in (("i2t_", (a, b)), ("t2i_", (b, a))):
      per_direction[pair] = {k[len(prefix) :]: v for k, v in both.items() if k.startswith(prefix)}
  directions = direction_names(modalities)
  first = per_direction[directions[0][1:]]
  result = {}
  for metric in first:
    if metric == "num_queries":
      continue
    values = [per_direction[q, g][metric] for _, q, g in directions]
    for (key, _, _), v in zip(directions, values, strict=True):
      result[f"{key}_{metric}"] = v
    result[f"avg_{metric}"] = math.fsum(values) / len(values)
  for key, q, g in directions:
    result[f"{key}_num_queries"] = per_direction[q, g]["num_queries"]
  return result

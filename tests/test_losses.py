"""Tests of mscross.losses against independent, slow NumPy references written with loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mscross import losses
from mscross.errors import ConfigError

RTOL = 1e-5
ATOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Data helpers. Compilation dominates the run time, so every batch has the same shapes
# (B = D = C = 6) and the jitted losses below are shared by all tests.
# ----------------------------------------------------------------------------------------------

B, D, C = 6, 6, 6


def make_labels(rng, batch=B, classes=C, multilabel=False):
  if multilabel:
    # Some rows come out all-zero on purpose: they exercise the "never its own negative" rule.
    return (rng.random((batch, classes)) < 0.3).astype(np.float32)
  # Only 3 of the C classes are drawn, so that same-class pairs are common.
  return np.eye(classes, dtype=np.float32)[rng.integers(0, 3, batch)]


def make_batch(seed, multilabel=False):
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(B, D)).astype(np.float32)
  txt = rng.normal(size=(B, D)).astype(np.float32)
  return img, txt, make_labels(rng, multilabel=multilabel)


def one_negative_batch(seed):
  """Item i is labelled with the arc {i, i+1, i+2} of a 6-cycle: its only disjoint item is i+3."""
  rng = np.random.default_rng(seed)
  labels = np.zeros((B, C), np.float32)
  for i in range(B):
    for j in range(3):
      labels[i, (i + j) % C] = 1.0
  img = rng.normal(size=(B, D)).astype(np.float32)
  txt = rng.normal(size=(B, D)).astype(np.float32)
  return img, txt, labels


def f64(*arrays):
  return [np.asarray(a, dtype=np.float64) for a in arrays]


def rng_key(seed):
  # Threefry takes seconds to compile on a small CPU; the losses treat every key type alike.
  return jax.random.key(seed, impl="rbg")


KEY = rng_key(42)

# Numeric options stay traced, so only the structural ones trigger a compilation.
acmr = jax.jit(losses.acmr_triplet_loss, static_argnames=("negative",))
mns = jax.jit(losses.multi_negative_loss, static_argnames=("negatives", "k"))
ms2gan = jax.jit(losses.ms2gan_similarity_loss, static_argnames=("mining",))
label_ce = jax.jit(losses.label_cross_entropy, static_argnames=("multilabel",))
orthogonality = jax.jit(losses.orthogonality_difference_loss, static_argnames=("reduction",))
large_margin = jax.jit(losses.large_margin_difference_loss)
dscmr_label = jax.jit(losses.dscmr_label_loss)
dscmr_pairwise = jax.jit(losses.dscmr_pairwise_loss)
dscmr_invariance = jax.jit(losses.dscmr_invariance_loss)
soft_triplet = jax.jit(losses.soft_triplet_loss)


# ----------------------------------------------------------------------------------------------
# NumPy references (loops over anchors and pairs, float64)
# ----------------------------------------------------------------------------------------------


def ref_norm(v):
  return math.sqrt(sum(float(x) ** 2 for x in v))


def ref_cos(u, v, eps=1e-8):
  return float(np.dot(u, v)) / (max(ref_norm(u), eps) * max(ref_norm(v), eps))


def ref_shares(la, lb):
  return any(a > 0 and b > 0 for a, b in zip(la, lb, strict=True))


def ref_softplus(x):
  return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_label_ce(logits, labels, multilabel):
  logits, labels = f64(logits, labels)
  out = []
  for row, y in zip(logits, labels, strict=True):
    if multilabel:
      out.append(sum(ref_softplus(x) - t * x for x, t in zip(row, y, strict=True)))
      continue
    mass = y.sum()
    if mass == 0:
      out.append(0.0)
      continue
    top = row.max()
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    out.append(-sum((t / mass) * (x - log_z) for x, t in zip(row, y, strict=True)))
  return np.array(out)


def ref_acmr(img, txt, labels, margin, pick=None):
  """pick(direction, anchor, negatives) -> chosen negative; default: the closest."""
  img, txt, labels = f64(img, txt, labels)
  batch = len(img)
  per_anchor = []
  for direction, (anchors, others) in enumerate(((img, txt), (txt, img))):
    for i in range(batch):
      negs = [j for j in range(batch) if j != i and not ref_shares(labels[i], labels[j])]
      if not negs:
        continue
      if pick is not None:
        j = pick(direction, i, negs)
      else:
        j = min(negs, key=lambda j, i=i: ref_norm(anchors[i] - others[j]))
      d_ap = ref_norm(anchors[i] - others[i])
      d_an = ref_norm(anchors[i] - others[j])
      per_anchor.append(max(0.0, d_ap - d_an + margin))
  return float(np.mean(per_anchor)) if per_anchor else 0.0


def ref_acmr_random_expectation(img, txt, labels, margin):
  """Expected ACMR loss when each anchor draws its negative uniformly."""
  img, txt, labels = f64(img, txt, labels)
  batch = len(img)
  per_anchor = []
  for anchors, others in ((img, txt), (txt, img)):
    for i in range(batch):
      negs = [j for j in range(batch) if j != i and not ref_shares(labels[i], labels[j])]
      if not negs:
        continue
      d_ap = ref_norm(anchors[i] - others[i])
      per_anchor.append(
        np.mean([max(0.0, d_ap - ref_norm(anchors[i] - others[j]) + margin) for j in negs])
      )
  return float(np.mean(per_anchor)) if per_anchor else 0.0


def ref_multi_negative(img, txt, labels, tau, negatives, k, intra_weight, margin):
  img, txt, labels = f64(img, txt, labels)
  batch = len(img)
  n_items = 2 * batch
  z = np.concatenate([img, txt])
  zl = np.concatenate([labels, labels])
  modality = [0] * batch + [1] * batch
  sim = [[ref_cos(z[a], z[b]) for b in range(n_items)] for a in range(n_items)]

  def select(a, candidates):
    if negatives == "all":
      return candidates
    if negatives == "hardest":
      return sorted(candidates, key=lambda n: -sim[a][n])[:k]
    chosen = set()
    for c in range(zl.shape[1]):
      with_c = [n for n in candidates if zl[n, c] > 0]
      if with_c:
        chosen.add(max(with_c, key=lambda n: sim[a][n]))
    return sorted(chosen)

  def anchor_loss(a, p, negs):
    return math.log(1.0 + sum(math.exp((sim[a][n] + margin - sim[a][p]) / tau) for n in negs))

  inter = []
  for a in range(n_items):
    partner = (a + batch) % n_items
    candidates = [
      n
      for n in range(n_items)
      if modality[n] != modality[a] and n != partner and not ref_shares(zl[a], zl[n])
    ]
    negs = select(a, candidates)
    inter.append(anchor_loss(a, partner, negs) if negs else 0.0)

  intra = []
  for a in range(n_items):
    same = [n for n in range(n_items) if modality[n] == modality[a] and n != a]
    positives = [p for p in same if ref_shares(zl[a], zl[p])]
    negs = select(a, [n for n in same if not ref_shares(zl[a], zl[n])])
    if positives and negs:
      intra.append(np.mean([anchor_loss(a, p, negs) for p in positives]))
    else:
      intra.append(0.0)
  return float(np.mean(inter) + intra_weight * np.mean(intra))


def ref_ms2gan(spec_img, shared_img, spec_txt, shared_txt, labels, margin, mining):
  spec_img, shared_img, spec_txt, shared_txt, labels = f64(
    spec_img, shared_img, spec_txt, shared_txt, labels
  )
  batch = len(labels)
  f = np.concatenate([spec_img, spec_txt])
  s = np.concatenate([shared_img, shared_txt])
  zl = np.concatenate([labels, labels])

  def dist(u, v):
    return ref_norm(f[u] - f[v]) ** 2 + ref_norm(s[u] - s[v]) ** 2

  terms = []
  for a in range(2 * batch):
    for target in (0, 1):
      items = [v for v in range(target * batch, (target + 1) * batch) if v != a]
      pos = [p for p in items if ref_shares(zl[a], zl[p])]
      neg = [n for n in items if not ref_shares(zl[a], zl[n])]
      if mining == "all":
        terms += [max(0.0, dist(a, p) - dist(a, n) + margin) for p in pos for n in neg]
      elif pos and neg:
        hardest_pos = max(dist(a, p) for p in pos)
        hardest_neg = min(dist(a, n) for n in neg)
        terms.append(max(0.0, hardest_pos - hardest_neg + margin))
  return float(np.mean(terms)) if terms else 0.0


def ref_unit(v, eps=1e-8):
  return np.asarray(v, np.float64) / max(ref_norm(v), eps)


def ref_large_margin(spec, shared, margin):
  return float(
    np.mean(
      [
        max(0.0, margin - ref_norm(ref_unit(f) - ref_unit(s)) ** 2)
        for f, s in zip(spec, shared, strict=True)
      ]
    )
  )


def ref_orthogonality(spec, shared, reduction):
  fs = [ref_unit(f) for f in spec]
  ss = [ref_unit(s) for s in shared]
  total = 0.0
  for a in range(len(fs[0])):
    for b in range(len(ss[0])):
      total += sum(f[a] * s[b] for f, s in zip(fs, ss, strict=True)) ** 2
  return total / len(fs) ** 2 if reduction == "mean" else total


def ref_dscmr(pred_img, pred_txt, f_img, f_txt, labels):
  pred_img, pred_txt, f_img, f_txt, labels = f64(pred_img, pred_txt, f_img, f_txt, labels)
  j1 = np.mean([ref_norm(p - y) for p, y in zip(pred_img, labels, strict=True)]) + np.mean(
    [ref_norm(p - y) for p, y in zip(pred_txt, labels, strict=True)]
  )
  j2 = 0.0
  for u, v in ((f_img, f_img), (f_img, f_txt), (f_txt, f_txt)):
    entries = []
    for i in range(len(u)):
      for j in range(len(v)):
        t = ref_cos(u[i], v[j]) / 2.0
        s = 1.0 if ref_shares(labels[i], labels[j]) else 0.0
        entries.append(math.log(1.0 + math.exp(t)) - s * t)
    j2 += np.mean(entries)
  j3 = np.mean([ref_norm(a - b) for a, b in zip(f_img, f_txt, strict=True)])
  return float(j1), float(j2), float(j3)


# ----------------------------------------------------------------------------------------------
# Adversarial machinery
# ----------------------------------------------------------------------------------------------


def test_gradient_reversal_forward_and_backward():
  x = jnp.array([1.0, -2.0, 3.0])
  w = jnp.array([0.5, 2.0, -1.0])
  np.testing.assert_array_equal(jax.jit(losses.gradient_reversal)(x, 0.7), x)
  objective = lambda x, lam: jnp.sum(w * losses.gradient_reversal(x, lam))
  grad_x, grad_lam = jax.jit(jax.grad(objective, argnums=(0, 1)))(x, 0.7)
  np.testing.assert_allclose(grad_x, -0.7 * w, rtol=1e-6)
  assert float(grad_lam) == 0.0


def test_gradient_reversal_keeps_dtype_and_pytrees():
  tree = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones((2, 2))}
  objective = lambda t: sum(jnp.sum(v) for v in losses.gradient_reversal(t, 2.0).values())
  grads = jax.jit(jax.grad(objective))(tree)
  assert grads["a"].dtype == jnp.bfloat16
  np.testing.assert_allclose(grads["a"].astype(np.float32), -2.0)
  np.testing.assert_allclose(grads["b"], -2.0)


def test_dann_lambda():
  schedule = jax.jit(losses.dann_lambda)
  assert float(schedule(0.0)) == 0.0
  np.testing.assert_allclose(schedule(1.0), 2 / (1 + math.exp(-10)) - 1, rtol=1e-6)
  np.testing.assert_allclose(schedule(1.0), 0.99991, atol=1e-5)
  np.testing.assert_allclose(schedule(0.3), 2 / (1 + math.exp(-3)) - 1, rtol=1e-6)
  assert float(schedule(-1.0)) == 0.0
  assert float(schedule(5.0)) == float(schedule(1.0))
  values = np.asarray(jax.jit(jax.vmap(losses.dann_lambda))(jnp.linspace(0.0, 1.0, 101)))
  assert np.all(np.diff(values) > 0)
  np.testing.assert_allclose(values[30], schedule(0.3), rtol=1e-6)


def test_modality_adversarial_loss():
  rng = np.random.default_rng(0)
  li = rng.normal(size=5).astype(np.float32)
  lt = rng.normal(size=3).astype(np.float32)
  expected = (sum(ref_softplus(-x) for x in li) + sum(ref_softplus(x) for x in lt)) / 8
  fn = jax.jit(losses.modality_adversarial_loss)
  np.testing.assert_allclose(fn(li, lt), expected, rtol=RTOL)
  np.testing.assert_allclose(fn(li[:, None], lt[:, None]), expected, rtol=RTOL)
  np.testing.assert_allclose(fn(np.zeros(4), np.zeros(4)), math.log(2), rtol=1e-6)
  big = jnp.array([1e4, -1e4])
  grads = jax.jit(jax.grad(losses.modality_adversarial_loss, argnums=(0, 1)))(big, big)
  assert all(np.all(np.isfinite(g)) for g in grads)
  with pytest.raises(AssertionError):
    losses.modality_adversarial_loss(jnp.zeros((4, 2)), jnp.zeros(4))


# ----------------------------------------------------------------------------------------------
# Label prediction and regularisation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_label_cross_entropy_matches_reference(multilabel):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(B, C)).astype(np.float32) * 3
  labels = make_labels(rng, multilabel=True)  # multi-hot rows test the normalisation too
  got = label_ce(logits, labels, multilabel=multilabel)
  assert got.shape == (B,)
  np.testing.assert_allclose(got, ref_label_ce(logits, labels, multilabel), rtol=RTOL, atol=ATOL)


def test_label_cross_entropy_known_values():
  zeros = np.zeros((B, C), np.float32)
  onehot = np.eye(C, dtype=np.float32)
  np.testing.assert_allclose(label_ce(zeros, onehot, multilabel=False), math.log(C), rtol=1e-6)
  np.testing.assert_allclose(label_ce(zeros, onehot, multilabel=True), C * math.log(2), rtol=1e-6)
  # The row [1, 1, 0, ...] is the target distribution (1/2, 1/2, 0, ...).
  logits = zeros.copy()
  logits[0, 0] = 2.0
  labels = onehot.copy()
  labels[0, 1] = 1.0
  log_z = math.log(math.exp(2) + C - 1)
  expected = -0.5 * (2 - log_z) - 0.5 * (0 - log_z)
  np.testing.assert_allclose(label_ce(logits, labels, multilabel=False)[0], expected, rtol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_label_cross_entropy_extreme_logits_and_empty_rows_finite(multilabel):
  logits = jnp.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  fn = lambda x: jnp.sum(losses.label_cross_entropy(x, labels, multilabel=multilabel))
  value, grad = jax.jit(jax.value_and_grad(fn))(logits)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


def test_frobenius_regulariser_linen_tree():
  params = {
    "params": {
      "dense_0": {"kernel": jnp.array([[3.0, 4.0]]), "bias": jnp.array([100.0])},
      "dense_1": {"kernel": jnp.zeros((2, 2)), "bias": jnp.ones(2)},
      "dense_2": {"kernel": jnp.array([[1.0], [2.0], [2.0]])},
    }
  }
  value, grads = jax.jit(jax.value_and_grad(losses.frobenius_regulariser))(params)
  np.testing.assert_allclose(value, 8.0, rtol=1e-6)
  grads = grads["params"]
  np.testing.assert_allclose(grads["dense_0"]["kernel"], [[0.6, 0.8]], rtol=1e-6)
  np.testing.assert_array_equal(grads["dense_1"]["kernel"], 0.0)  # zero kernel: finite, zero
  np.testing.assert_array_equal(grads["dense_0"]["bias"], 0.0)
  assert float(jax.jit(losses.frobenius_regulariser)({"bias": jnp.ones(3)})) == 0.0


def test_frobenius_regulariser_nnx_state():
  layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  state = nnx.state(layer, nnx.Param)
  kernel = np.asarray(layer.kernel[...], np.float64)
  np.testing.assert_allclose(
    jax.jit(losses.frobenius_regulariser)(state), np.sqrt(np.sum(kernel**2)), rtol=1e-6
  )


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def test_pairwise_matrices_match_loops():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(4, 3)).astype(np.float32)
  b = rng.normal(size=(5, 3)).astype(np.float32)
  b[0] = 0.0
  cos = np.asarray(jax.jit(losses.pairwise_cosine)(a, b))
  sq = np.asarray(jax.jit(losses.pairwise_sq_euclidean)(a, b))
  assert cos.shape == sq.shape == (4, 5)
  for i in range(4):
    for j in range(5):
      np.testing.assert_allclose(cos[i, j], ref_cos(a[i], b[j]), atol=1e-6)
      np.testing.assert_allclose(sq[i, j], ref_norm(a[i] - b[j]) ** 2, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(jax.jit(losses.pairwise_sq_euclidean)(a, a)) >= 0)
  zeros = jnp.zeros((3, 3))
  objective = lambda x: jnp.sum(losses.pairwise_cosine(x, x) + losses.pairwise_sq_euclidean(x, x))
  assert np.all(np.isfinite(jax.jit(jax.grad(objective))(zeros)))


# ----------------------------------------------------------------------------------------------
# ACMR
# ----------------------------------------------------------------------------------------------


def test_acmr_known_value():
  img = np.zeros((B, D), np.float32)
  txt = np.zeros((B, D), np.float32)
  img[1, 0] = 3.0
  txt[0, 0], txt[1, :2] = 1.0, (3.0, 4.0)
  labels = np.zeros((B, C), np.float32)
  labels[0, 0] = labels[1, 1] = 1.0
  labels[2:, :2] = 1.0  # rows 2.. share a label with everyone: only 0 and 1 have a negative

  # img0 relu(1-5+5)=1, img1 relu(4-2+5)=7, txt0 relu(1-2+5)=4, txt1 relu(4-5+5)=4.
  for negative, rng in (("hardest", None), ("random", rng_key(0))):
    got = acmr(img, txt, labels, margin=5.0, negative=negative, rng=rng)
    np.testing.assert_allclose(got, 4.0, rtol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_acmr_hardest_matches_reference(multilabel, seed):
  img, txt, labels = make_batch(seed, multilabel=multilabel)
  got = acmr(img, txt, labels, margin=2.0, negative="hardest")
  np.testing.assert_allclose(got, ref_acmr(img, txt, labels, 2.0), rtol=RTOL, atol=ATOL)


def test_acmr_anchors_without_negative_are_left_out():
  img, txt, _ = make_batch(7)
  labels = np.eye(C, dtype=np.float32)
  labels[0] = 1.0  # item 0 shares a label with everyone: anchors 0 (both directions) drop out
  got = acmr(img, txt, labels, margin=1.0, negative="hardest")
  np.testing.assert_allclose(got, ref_acmr(img, txt, labels, 1.0), rtol=RTOL)
  one_class = np.ones((B, C), np.float32)
  assert float(acmr(img, txt, one_class, margin=1.0, negative="random", rng=KEY)) == 0.0


def test_acmr_random_single_valid_negative_matches_reference():
  img, txt, labels = one_negative_batch(3)
  want = ref_acmr(img, txt, labels, 3.0, pick=lambda direction, i, negs: negs[0])
  for seed in range(3):
    got = acmr(img, txt, labels, margin=3.0, negative="random", rng=rng_key(seed))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_acmr_random_picks_only_disjoint_negatives_uniformly():
  _, _, labels = make_batch(4)
  share = labels @ labels.T > 0
  neg_mask = jnp.asarray(~share & ~np.eye(B, dtype=bool))
  keys = jax.random.split(rng_key(0), 4000)
  picks = jax.jit(jax.vmap(losses._random_negative_indices, in_axes=(0, None)))(keys, neg_mask)
  picks = np.stack([np.asarray(p) for p in picks], axis=1)  # [keys, direction, anchor]
  for i in range(B):
    valid = np.flatnonzero(~share[i])
    assert valid.size > 0
    for direction in range(2):
      chosen = picks[:, direction, i]
      assert set(chosen.tolist()) <= set(valid.tolist())
      freq = np.bincount(chosen, minlength=B)[valid] / len(chosen)
      np.testing.assert_allclose(freq, 1.0 / valid.size, atol=0.05)


ACMR_RANDOM_DRAWS = jax.jit(
  jax.vmap(
    lambda key, img, txt, labels: losses.acmr_triplet_loss(img, txt, labels, margin=3.0, rng=key),
    in_axes=(0, None, None, None),
  )
)


@pytest.mark.parametrize("multilabel", [False, True])
def test_acmr_random_expectation_matches_reference(multilabel):
  img, txt, labels = make_batch(5, multilabel=multilabel)
  keys = jax.random.split(rng_key(1), 4000)
  draws = ACMR_RANDOM_DRAWS(keys, img, txt, labels)
  want = ref_acmr_random_expectation(img, txt, labels, 3.0)
  np.testing.assert_allclose(np.mean(draws), want, rtol=0.01)


def test_acmr_random_is_deterministic_per_key():
  img, txt, labels = make_batch(6)
  keys = jax.random.split(rng_key(8), 4000)
  first = np.asarray(ACMR_RANDOM_DRAWS(keys, img, txt, labels))
  again = np.asarray(ACMR_RANDOM_DRAWS(keys, img, txt, labels))
  np.testing.assert_array_equal(first, again)
  assert len(set(first.tolist())) > 1


def test_acmr_options_are_validated():
  img, txt, labels = make_batch(0)
  with pytest.raises(ConfigError):
    losses.acmr_triplet_loss(img, txt, labels, margin=1.0, negative="semi-hard")
  with pytest.raises(ValueError):
    losses.acmr_triplet_loss(img, txt, labels, margin=1.0)
  with pytest.raises(AssertionError):
    losses.acmr_triplet_loss(img, txt[:3], labels, margin=1.0, negative="hardest")


# ----------------------------------------------------------------------------------------------
# MNS-GAN
# ----------------------------------------------------------------------------------------------


def test_soft_triplet_loss():
  np.testing.assert_allclose(
    soft_triplet(np.array([0.3]), np.array([0.3]), tau=0.1), [math.log(2)], rtol=1e-6
  )
  s_ap = np.array([0.9, -0.2, 0.5], np.float32)
  s_an = np.array([0.1, 0.4, 0.5], np.float32)
  want = [math.log1p(math.exp((n - p) / 0.5)) for p, n in zip(s_ap, s_an, strict=True)]
  got = soft_triplet(s_ap, s_an, tau=0.5)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  objective = lambda a: jnp.sum(losses.soft_triplet_loss(a, -a, tau=1e-3))
  grads = jax.jit(jax.grad(objective))(jnp.ones(2))
  assert np.all(np.isfinite(grads))


def test_multi_negative_known_value():
  img = np.zeros((B, D), np.float32)
  img[:, :B] = np.eye(B)
  labels = np.eye(B, C, dtype=np.float32)
  # Every anchor: s_ap = 1 and 5 orthogonal negatives (s_an = 0); no same-class item -> intra = 0.
  got = mns(img, img, labels, tau=0.1, negatives="all", k=5)
  np.testing.assert_allclose(got, math.log1p(5 * math.exp(-10.0)), rtol=1e-5)
  got = mns(img, img, labels, tau=0.1, negatives="hardest", k=2)
  np.testing.assert_allclose(got, math.log1p(2 * math.exp(-10.0)), rtol=1e-5)


@pytest.mark.parametrize(
  "negatives,k", [("all", 5), ("hardest", 1), ("per_class", 5)], ids=["all", "hardest", "per_class"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_multi_negative_one_negative_equals_soft_triplet(negatives, k, seed):
  img, txt, labels = one_negative_batch(seed)
  got = mns(img, txt, labels, tau=0.2, negatives=negatives, k=k, intra_weight=0.0, margin=0.0)
  s_ap, s_an = [], []
  for anchors, others in ((img, txt), (txt, img)):
    for i in range(B):
      s_ap.append(ref_cos(anchors[i], others[i]))
      s_an.append(ref_cos(anchors[i], others[(i + 3) % B]))
  s_ap, s_an = np.array(s_ap, np.float32), np.array(s_an, np.float32)
  np.testing.assert_allclose(got, np.mean(soft_triplet(s_ap, s_an, tau=0.2)), rtol=RTOL, atol=ATOL)
  want = np.mean([math.log1p(math.exp((n - p) / 0.2)) for p, n in zip(s_ap, s_an, strict=True)])
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


MNS_CASES = [
  dict(negatives="all", k=5, intra_weight=0.5, margin=0.0, tau=0.1),
  dict(negatives="all", k=5, intra_weight=1.0, margin=0.2, tau=0.5),
  dict(negatives="hardest", k=2, intra_weight=0.5, margin=0.0, tau=0.1),
  dict(negatives="hardest", k=1, intra_weight=0.3, margin=0.1, tau=0.2),
  dict(negatives="per_class", k=5, intra_weight=0.5, margin=0.0, tau=0.1),
  dict(negatives="per_class", k=5, intra_weight=0.0, margin=0.3, tau=0.3),
]


@pytest.mark.parametrize("case", MNS_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("multilabel", [False, True])
def test_multi_negative_matches_reference(case, multilabel):
  img, txt, labels = make_batch(11, multilabel=multilabel)
  got = mns(img, txt, labels, **case)
  want = ref_multi_negative(img, txt, labels, **case)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("multilabel", [False, True])
def test_multi_negative_hardest_with_large_k_equals_all(multilabel):
  img, txt, labels = make_batch(12, multilabel=multilabel)
  everything = mns(img, txt, labels, negatives="all", k=5)
  hardest = mns(img, txt, labels, negatives="hardest", k=100)  # beyond 2B: clamped
  np.testing.assert_allclose(hardest, everything, rtol=1e-6)


def test_multi_negative_one_class_batch_is_zero():
  img, txt, _ = make_batch(13)
  labels = np.ones((B, C), np.float32)
  for negatives, k in (("all", 5), ("hardest", 2), ("per_class", 5)):
    assert float(mns(img, txt, labels, negatives=negatives, k=k)) == 0.0


def test_multi_negative_options_are_validated():
  img, txt, labels = make_batch(0)
  with pytest.raises(ConfigError):
    losses.multi_negative_loss(img, txt, labels, negatives="some")
  with pytest.raises(ConfigError):
    losses.multi_negative_loss(img, txt, labels, negatives="hardest", k=0)


# ----------------------------------------------------------------------------------------------
# MS2GAN
# ----------------------------------------------------------------------------------------------


def make_ms2gan_batch(seed, multilabel):
  rng = np.random.default_rng(seed)
  feats = [rng.normal(size=(B, d)).astype(np.float32) for d in (D, 3, D, 3)]
  return (*feats, make_labels(rng, multilabel=multilabel))


def test_ms2gan_known_value():
  spec = np.zeros((B, D), np.float32)
  spec[1, 0] = 1.0
  shared = np.zeros((B, 3), np.float32)
  labels = np.zeros((B, C), np.float32)
  labels[0, 0] = labels[1, 1] = 1.0
  # Items 2.. are unlabelled: never positives, negatives of everyone; all sit at the origin.
  # Anchor 0 (either modality), cross-modal: positive at d=0; negatives: item 1 at d=1 and the
  # four unlabelled ones at d=0. Intra-modal: no positive. Same for anchor 1 (d(1, rest) = 1).
  # Triplets per anchor 0: relu(0 - 1 + 2) = 1 and 4 x relu(0 - 0 + 2) = 2 -> sum 9 over 5.
  # Anchor 1: relu(0 - 1 + 2) = 1, five times -> 5 over 5. Both modalities: (9+5) * 2 / 20 = 1.4.
  got = ms2gan(spec, shared, spec, shared, labels, margin=2.0, mining="all")
  np.testing.assert_allclose(got, 1.4, rtol=1e-6)
  # Batch-hard: anchor 0 closest negative at 0 -> 2; anchor 1 -> 1; mean over 4 cells = 1.5.
  got = ms2gan(spec, shared, spec, shared, labels, margin=2.0, mining="hardest")
  np.testing.assert_allclose(got, 1.5, rtol=1e-6)


@pytest.mark.parametrize("mining", ["all", "hardest"])
@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_ms2gan_matches_reference(mining, multilabel, seed):
  *feats, labels = make_ms2gan_batch(seed, multilabel)
  got = ms2gan(*feats, labels, margin=1.5, mining=mining)
  want = ref_ms2gan(*feats, labels, margin=1.5, mining=mining)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_ms2gan_options_are_validated():
  *feats, labels = make_ms2gan_batch(0, False)
  with pytest.raises(ConfigError):
    losses.ms2gan_similarity_loss(*feats, labels, mining="semi")


def test_large_margin_difference_loss():
  rng = np.random.default_rng(3)
  spec = rng.normal(size=(B, D)).astype(np.float32)
  np.testing.assert_allclose(large_margin(spec, 2 * spec, margin=0.5), 0.5, rtol=1e-6)
  np.testing.assert_allclose(large_margin(spec, -spec, margin=5.0), 1.0, rtol=1e-6)  # gap 4
  assert float(large_margin(spec, -spec, margin=0.5)) == 0.0
  shared = rng.normal(size=(B, D)).astype(np.float32)
  shared[:3] = spec[:3] + 0.1  # some rows inside the margin
  got = large_margin(spec, shared, margin=1.5)
  np.testing.assert_allclose(got, ref_large_margin(spec, shared, 1.5), rtol=RTOL, atol=ATOL)


def test_orthogonality_difference_loss():
  # F^T S correlates feature dimensions over the batch: these columns are orthogonal ...
  f = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
  s = np.array([[0.0, 1.0], [0.0, -1.0]], np.float32)
  assert float(orthogonality(f, s, reduction="mean")) == 0.0
  # ... while identical rows in both are fully correlated: F^T S = 2 e1 e1^T.
  np.testing.assert_allclose(orthogonality(f, 5 * f, reduction="mean"), 1.0, rtol=1e-6)
  np.testing.assert_allclose(orthogonality(f, 5 * f, reduction="sum"), 4.0, rtol=1e-6)
  rng = np.random.default_rng(4)
  spec = rng.normal(size=(B, D)).astype(np.float32)
  shared = rng.normal(size=(B, 3)).astype(np.float32)
  for reduction in ("mean", "sum"):
    got = orthogonality(spec, shared, reduction=reduction)
    want = ref_orthogonality(spec, shared, reduction)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  with pytest.raises(ConfigError):
    losses.orthogonality_difference_loss(spec, shared, reduction="max")


# ----------------------------------------------------------------------------------------------
# DSCMR
# ----------------------------------------------------------------------------------------------


def test_dscmr_known_values():
  labels = np.eye(B, C, dtype=np.float32)
  preds = labels.copy()
  preds[:, 0] += 1.0  # every row is off by exactly 1, in class 0
  np.testing.assert_allclose(dscmr_label(preds, preds, labels), 2.0, rtol=1e-6)
  zeros = np.zeros((B, D), np.float32)
  np.testing.assert_allclose(dscmr_pairwise(zeros, zeros, labels), 3 * math.log(2), rtol=1e-6)
  pair = zeros.copy()
  pair[:, :2] = (3.0, 4.0)
  np.testing.assert_allclose(dscmr_invariance(pair, zeros), 5.0, rtol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_dscmr_matches_reference(multilabel):
  rng = np.random.default_rng(5)
  labels = make_labels(rng, multilabel=multilabel)
  pred_img, pred_txt = rng.normal(size=(2, B, C)).astype(np.float32)
  f_img, f_txt = rng.normal(size=(2, B, D)).astype(np.float32)
  j1, j2, j3 = ref_dscmr(pred_img, pred_txt, f_img, f_txt, labels)
  np.testing.assert_allclose(dscmr_label(pred_img, pred_txt, labels), j1, rtol=RTOL)
  np.testing.assert_allclose(dscmr_pairwise(f_img, f_txt, labels), j2, rtol=RTOL)
  np.testing.assert_allclose(dscmr_invariance(f_img, f_txt), j3, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# Cross-cutting: jit and vmap parity, finite gradients on degenerate batches
# ----------------------------------------------------------------------------------------------

# Every loss as a function of (img, txt, labels) [B, D], [B, D], [B, C] with D == C.
PAIR_LOSSES = {
  "acmr_random": lambda i, t, y: losses.acmr_triplet_loss(i, t, y, margin=1.0, rng=KEY),
  "acmr_hardest": lambda i, t, y: losses.acmr_triplet_loss(i, t, y, margin=1.0, negative="hardest"),
  "mns_all": lambda i, t, y: losses.multi_negative_loss(i, t, y, margin=0.1),
  "mns_hardest": lambda i, t, y: losses.multi_negative_loss(i, t, y, negatives="hardest", k=2),
  # A literal 0 takes the branch that skips the intra-modal term.
  "mns_per_class": lambda i, t, y: losses.multi_negative_loss(
    i, t, y, negatives="per_class", intra_weight=0
  ),
  "ms2gan_all": lambda i, t, y: losses.ms2gan_similarity_loss(i, i[:, :3], t, t[:, :3], y),
  "ms2gan_hardest": lambda i, t, y: losses.ms2gan_similarity_loss(
    i, 2 * i, t, -t, y, mining="hardest"
  ),
  "large_margin": lambda i, t, y: losses.large_margin_difference_loss(i, t),
  "orthogonality": lambda i, t, y: losses.orthogonality_difference_loss(i, t),
  "dscmr_label": lambda i, t, y: losses.dscmr_label_loss(i, t, y),
  "dscmr_pairwise": lambda i, t, y: losses.dscmr_pairwise_loss(i, t, y),
  "dscmr_invariance": lambda i, t, y: losses.dscmr_invariance_loss(i, t),
  "label_ce": lambda i, t, y: jnp.mean(losses.label_cross_entropy(i, y)),
  "label_bce": lambda i, t, y: jnp.mean(losses.label_cross_entropy(t, y, multilabel=True)),
  "adversarial": lambda i, t, y: losses.modality_adversarial_loss(i[:, 0], t[:, :1]),
}


def degenerate_batches():
  img, txt, labels = make_batch(20, multilabel=True)
  yield "random", img, txt, labels
  yield "zero_vectors", np.zeros_like(img), np.zeros_like(txt), labels
  yield "identical_pairs", img, img.copy(), labels
  yield "one_class", img, txt, np.ones_like(labels)
  yield "no_labels", img, txt, np.zeros_like(labels)
  everyone = labels.copy()
  everyone[0] = 1.0  # row 0 has no negative
  yield "row_without_negative", img, txt, everyone
  duplicated = np.repeat(img[:1], B, axis=0)
  yield "duplicate_items", duplicated, duplicated.copy(), labels


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_jit_vmap_parity_and_finite_gradients(name):
  # One compilation per loss: jit(vmap(value_and_grad)) over a stack of ordinary and degenerate
  # batches must equal a loop of eager calls, with finite values and gradients everywhere.
  fn = PAIR_LOSSES[name]
  cases = list(degenerate_batches())
  stacked = [np.stack(parts) for parts in zip(*(c[1:] for c in cases), strict=True)]
  values, grads = jax.jit(jax.vmap(jax.value_and_grad(fn, argnums=(0, 1))))(*stacked)
  for index, (case, img, txt, labels) in enumerate(cases):
    assert np.isfinite(values[index]), (name, case)
    for g in grads:
      assert np.all(np.isfinite(g[index])), (name, case)
    np.testing.assert_allclose(values[index], fn(img, txt, labels), rtol=1e-5, atol=1e-6)

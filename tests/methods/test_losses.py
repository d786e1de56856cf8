"""Tests of mscross.methods.losses against independent, slow NumPy references written with loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mscross.errors import ConfigError
from mscross.methods import losses

RTOL = 1e-5
ATOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Data helpers. Compilation dominates the run time, so every batch has the same shapes
# (B = D = C = 6, K in KS modalities) and the jitted losses below are shared by all tests.
# ----------------------------------------------------------------------------------------------

B, D, C = 6, 6, 6
KS = (2, 3)


def make_labels(rng, batch=B, classes=C, multilabel=False):
  if multilabel:
    # Some rows come out all-zero on purpose: they exercise the "never its own negative" rule.
    return (rng.random((batch, classes)) < 0.3).astype(np.float32)
  # Only 3 of the C classes are drawn, so that same-class pairs are common.
  return np.eye(classes, dtype=np.float32)[rng.integers(0, 3, batch)]


def make_batch(seed, k=2, multilabel=False):
  """Stacked features [k, B, D] of k paired modalities and their labels [B, C]."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(k, B, D)).astype(np.float32)
  return z, make_labels(rng, multilabel=multilabel)


def one_negative_batch(seed, k=2):
  """Item i is labelled with the arc {i, i+1, i+2} of a 6-cycle: its only disjoint item is i+3."""
  rng = np.random.default_rng(seed)
  labels = np.zeros((B, C), np.float32)
  for i in range(B):
    for j in range(3):
      labels[i, (i + j) % C] = 1.0
  return rng.normal(size=(k, B, D)).astype(np.float32), labels


def f64(*arrays):
  return [np.asarray(a, dtype=np.float64) for a in arrays]


def rng_key(seed):
  # Threefry takes seconds to compile on a small CPU; the losses treat every key type alike.
  return jax.random.key(seed, impl="rbg")


KEY = rng_key(42)

# Numeric options stay traced, so only the structural ones trigger a compilation.
acmr = jax.jit(losses.acmr_triplet_loss, static_argnames=("negatives",))
mns = jax.jit(losses.multi_negative_loss, static_argnames=("negatives", "k"))
ms2gan = jax.jit(losses.ms2gan_similarity_loss, static_argnames=("negatives", "normalize"))
adversarial = jax.jit(losses.modality_adversarial_loss)
confusion = jax.jit(losses.modality_confusion_loss)
label_ce = jax.jit(losses.label_cross_entropy, static_argnames=("multilabel",))
orthogonality = jax.jit(losses.orthogonality_difference_loss, static_argnames=("reduction",))
large_margin = jax.jit(losses.large_margin_difference_loss)
dscmr_label = jax.jit(losses.dscmr_label_loss)
dscmr_pairwise = jax.jit(losses.dscmr_pairwise_loss)
dscmr_invariance = jax.jit(losses.dscmr_invariance_loss)
soft_triplet = jax.jit(losses.soft_triplet_loss)


# ----------------------------------------------------------------------------------------------
# NumPy references for K modalities (loops over modalities, anchors and pairs, float64)
# ----------------------------------------------------------------------------------------------


def ref_norm(v):
  return math.sqrt(sum(float(x) ** 2 for x in v))


def ref_cos(u, v, eps=1e-8):
  return float(np.dot(u, v)) / (max(ref_norm(u), eps) * max(ref_norm(v), eps))


def ref_shares(la, lb):
  return any(a > 0 and b > 0 for a, b in zip(la, lb, strict=True))


def ref_softplus(x):
  return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_unit(v, eps=1e-8):
  return np.asarray(v, np.float64) / max(ref_norm(v), eps)


def ref_log_softmax(row, index):
  top = max(row)
  return row[index] - top - math.log(sum(math.exp(x - top) for x in row))


def ordered_pairs(k):
  return [(a, b) for a in range(k) for b in range(k) if a != b]


def ref_label_ce(logits, labels, multilabel, smoothing=0.0):
  logits, labels = f64(logits, labels)
  out = []
  num_classes = labels.shape[1]
  for row, y in zip(logits, labels, strict=True):
    if multilabel:
      targets = [(1 - smoothing) * t + smoothing / 2 for t in y]
      out.append(sum(ref_softplus(x) - t * x for x, t in zip(row, targets, strict=True)))
      continue
    mass = y.sum()
    if mass == 0:
      out.append(0.0)
      continue
    top = row.max()
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    targets = [(1 - smoothing) * t / mass + smoothing / num_classes for t in y]
    out.append(-sum(t * (x - log_z) for x, t in zip(row, targets, strict=True)))
  return np.array(out)


def ref_adversarial(logits):
  (logits,) = f64(logits)
  terms = []
  for k in range(logits.shape[0]):
    for row in logits[k]:
      terms.append(-ref_log_softmax(list(row), k))
  return float(np.mean(terms))


def ref_confusion(logits):
  """Mean over items of the cross-entropy of their predictions against the uniform target."""
  (logits,) = f64(logits)
  k = logits.shape[0]
  terms = []
  for modality in range(k):
    for row in logits[modality]:
      terms.append(-sum(ref_log_softmax(list(row), j) for j in range(k)) / k)
  return float(np.mean(terms))


def ref_acmr(z, labels, margin, pick=None):
  """pick(cell, anchor, negatives) -> chosen negative; default: the closest.

  `cell` numbers the ordered modality pairs (anchor modality, target modality) lexicographically.
  """
  z, labels = f64(z, labels)
  batch = len(labels)
  per_cell = []
  for cell, (a, b) in enumerate(ordered_pairs(len(z))):
    anchors, others = z[a], z[b]
    for i in range(batch):
      negs = [j for j in range(batch) if j != i and not ref_shares(labels[i], labels[j])]
      if not negs:
        continue
      if pick is not None:
        j = pick(cell, i, negs)
      else:
        j = min(negs, key=lambda j, i=i: ref_norm(anchors[i] - others[j]))
      d_ap = ref_norm(anchors[i] - others[i])
      d_an = ref_norm(anchors[i] - others[j])
      per_cell.append(max(0.0, d_ap - d_an + margin))
  return float(np.mean(per_cell)) if per_cell else 0.0


def ref_acmr_random_expectation(z, labels, margin):
  """Expected ACMR loss when each cell draws its negative uniformly."""
  z, labels = f64(z, labels)
  batch = len(labels)
  per_cell = []
  for a, b in ordered_pairs(len(z)):
    for i in range(batch):
      negs = [j for j in range(batch) if j != i and not ref_shares(labels[i], labels[j])]
      if not negs:
        continue
      d_ap = ref_norm(z[a][i] - z[b][i])
      per_cell.append(
        np.mean([max(0.0, d_ap - ref_norm(z[a][i] - z[b][j]) + margin) for j in negs])
      )
  return float(np.mean(per_cell)) if per_cell else 0.0


def gumbel_pick(key, num_cells):
  """The documented draw: Gumbel-max over one [num_cells, B, B] array, cell by cell."""
  gumbel = np.asarray(jax.random.gumbel(key, (num_cells, B, B)))
  return lambda cell, i, negs: max(negs, key=lambda j: gumbel[cell, i, j])


def ref_multi_negative(z, labels, tau, negatives, k, intra_weight, margin):
  z, labels = f64(z, labels)
  num_mod, batch = z.shape[:2]
  items = [(m, i) for m in range(num_mod) for i in range(batch)]
  sim = {(u, v): ref_cos(z[u], z[v]) for u in items for v in items}

  def select(a, candidates):
    if negatives == "all":
      return candidates
    if negatives == "hardest":
      return sorted(candidates, key=lambda n: -sim[a, n])[:k]
    chosen = set()
    for c in range(labels.shape[1]):
      with_c = [n for n in candidates if labels[n[1], c] > 0]
      if with_c:
        chosen.add(max(with_c, key=lambda n: sim[a, n]))
    return sorted(chosen)

  def pair_loss(a, p, negs):
    return math.log(1.0 + sum(math.exp((sim[a, n] + margin - sim[a, p]) / tau) for n in negs))

  inter = []
  for a in items:
    for target in range(num_mod):
      if target == a[0]:
        continue
      partner = (target, a[1])
      candidates = [
        (target, j) for j in range(batch) if j != a[1] and not ref_shares(labels[a[1]], labels[j])
      ]
      negs = select(a, candidates)
      inter.append(pair_loss(a, partner, negs) if negs else 0.0)

  intra = []
  for a in items:
    same = [(a[0], j) for j in range(batch) if j != a[1]]
    positives = [p for p in same if ref_shares(labels[a[1]], labels[p[1]])]
    negs = select(a, [n for n in same if not ref_shares(labels[a[1]], labels[n[1]])])
    if positives and negs:
      intra.append(np.mean([pair_loss(a, p, negs) for p in positives]))
    else:
      intra.append(0.0)
  assert len(inter) == num_mod * (num_mod - 1) * batch and len(intra) == num_mod * batch
  return float(np.mean(inter) + intra_weight * np.mean(intra))


def ref_infonce(z, tau):
  """Contrastive InfoNCE, mean over every ordered pair of modalities and every anchor."""
  (z,) = f64(z)
  terms = []
  for a, b in ordered_pairs(len(z)):
    for i in range(len(z[a])):
      row = [ref_cos(z[a][i], z[b][j]) / tau for j in range(len(z[b]))]
      terms.append(-ref_log_softmax(row, i))
  return float(np.mean(terms))


def ref_ms2gan(spec, shared, labels, margin, negatives, normalize):
  spec, shared, labels = f64(spec, shared, labels)
  num_mod, batch = spec.shape[:2]
  items = [(m, i) for m in range(num_mod) for i in range(batch)]
  prep = ref_unit if normalize else (lambda v: v)
  f = {u: prep(spec[u]) for u in items}
  s = {u: prep(shared[u]) for u in items}

  def dist(u, v):
    return ref_norm(f[u] - f[v]) ** 2 + ref_norm(s[u] - s[v]) ** 2

  terms = []
  for a in items:
    for target in range(num_mod):
      others = [(target, j) for j in range(batch) if (target, j) != a]
      pos = [p for p in others if ref_shares(labels[a[1]], labels[p[1]])]
      neg = [n for n in others if not ref_shares(labels[a[1]], labels[n[1]])]
      if negatives == "all":
        terms += [max(0.0, dist(a, p) - dist(a, n) + margin) for p in pos for n in neg]
      elif pos and neg:
        hardest_pos = max(dist(a, p) for p in pos)
        hardest_neg = min(dist(a, n) for n in neg)
        terms.append(max(0.0, hardest_pos - hardest_neg + margin))
  return float(np.mean(terms)) if terms else 0.0


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


def ref_dscmr(preds, z, labels):
  preds, z, labels = f64(preds, z, labels)
  num_mod = len(z)
  j1 = sum(
    np.mean([ref_norm(p - y) for p, y in zip(preds[m], labels, strict=True)])
    for m in range(num_mod)
  )
  j2 = 0.0
  for a in range(num_mod):
    for b in range(a, num_mod):
      entries = []
      for i in range(len(labels)):
        for j in range(len(labels)):
          t = ref_cos(z[a][i], z[b][j]) / 2.0
          s = 1.0 if ref_shares(labels[i], labels[j]) else 0.0
          entries.append(math.log(1.0 + math.exp(t)) - s * t)
      j2 += np.mean(entries)
  j3 = 0.0
  for a in range(num_mod):
    for b in range(a + 1, num_mod):
      j3 += np.mean([ref_norm(u - v) for u, v in zip(z[a], z[b], strict=True)])
  return float(j1), float(j2), float(j3)


# ----------------------------------------------------------------------------------------------
# The two-modality definitions (image, text) that K = 2 must reproduce, as NumPy loops
# ----------------------------------------------------------------------------------------------


def ref2_adversarial(logits_img, logits_txt):
  """Sigmoid BCE of a one-logit discriminator, image = 1, text = 0."""
  total = sum(ref_softplus(-float(x)) for x in logits_img)
  total += sum(ref_softplus(float(x)) for x in logits_txt)
  return total / (len(logits_img) + len(logits_txt))


def ref2_acmr(img, txt, labels, margin, pick=None):
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


def ref2_multi_negative(img, txt, labels, tau, negatives, k, intra_weight, margin):
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


def ref2_ms2gan(spec_img, shared_img, spec_txt, shared_txt, labels, margin, negatives):
  """The unnormalised distance ||f_u - f_v||^2 + ||s_u - s_v||^2."""
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
      if negatives == "all":
        terms += [max(0.0, dist(a, p) - dist(a, n) + margin) for p in pos for n in neg]
      elif pos and neg:
        hardest_pos = max(dist(a, p) for p in pos)
        hardest_neg = min(dist(a, n) for n in neg)
        terms.append(max(0.0, hardest_pos - hardest_neg + margin))
  return float(np.mean(terms)) if terms else 0.0


def ref2_dscmr(pred_img, pred_txt, f_img, f_txt, labels):
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


@pytest.mark.parametrize("k", KS)
def test_modality_adversarial_loss_matches_reference(k):
  rng = np.random.default_rng(0)
  logits = (3 * rng.normal(size=(k, 5, k))).astype(np.float32)  # 5 items: any batch size
  np.testing.assert_allclose(adversarial(logits), ref_adversarial(logits), rtol=RTOL)
  # Uniform logits: every item gets probability 1/K for its modality.
  np.testing.assert_allclose(adversarial(np.zeros((k, 4, k))), math.log(k), rtol=1e-6)
  # A confident, correct discriminator has a loss near 0, a confident wrong one a large loss.
  confident = 50.0 * np.broadcast_to(np.eye(k)[:, None, :], (k, 4, k))
  assert float(adversarial(confident)) < 1e-6
  np.testing.assert_allclose(adversarial(-confident), 50.0 + math.log(k - 1), rtol=1e-5)


def test_modality_adversarial_loss_extremes_and_shapes():
  big = jnp.array([[[1e4, -1e4], [-1e4, 1e4]], [[1e4, -1e4], [-1e4, 1e4]]])
  grads = jax.jit(jax.grad(losses.modality_adversarial_loss))(big)
  assert np.all(np.isfinite(grads))
  assert np.isfinite(float(adversarial(-big)))
  for shape in ((2, 4, 3), (3, 4, 2), (2, 4), (1, 4, 1), (2, 4, 1)):
    with pytest.raises(AssertionError):
      losses.modality_adversarial_loss(jnp.zeros(shape))


@pytest.mark.parametrize("k", KS)
def test_modality_confusion_loss_matches_reference(k):
  rng = np.random.default_rng(1)
  logits = (3 * rng.normal(size=(k, 5, k))).astype(np.float32)
  np.testing.assert_allclose(confusion(logits), ref_confusion(logits), rtol=RTOL)
  # Its minimum, log K, where the discriminator cannot tell the modalities apart.
  np.testing.assert_allclose(confusion(np.zeros((k, 4, k))), math.log(k), rtol=1e-6)
  assert float(confusion(logits)) > math.log(k)


@pytest.mark.parametrize("k", KS)
def test_a_won_game_still_pushes_the_encoders_under_confusion(k):
  # A confident, correct discriminator: the minimax term has no gradient left, the confusion
  # term has the largest one it can.
  won = 20.0 * np.broadcast_to(np.eye(k)[:, None, :], (k, 4, k)).astype(np.float32)
  minimax_grad = jax.grad(losses.modality_adversarial_loss)(won)
  confusion_grad = jax.grad(losses.modality_confusion_loss)(won)
  assert float(jnp.abs(minimax_grad).max()) < 1e-7
  # d/dz_j of the mean over K*B items: (p_j - 1/K) / (K B); the winning logit has p_j = 1.
  np.testing.assert_allclose(jnp.abs(confusion_grad).max(), (1 - 1 / k) / (k * 4), rtol=1e-5)
  assert np.all(np.isfinite(jax.grad(losses.modality_confusion_loss)(1e4 * won)))
  for shape in ((2, 4, 3), (2, 4), (1, 4, 1)):
    with pytest.raises(AssertionError):
      losses.modality_confusion_loss(jnp.zeros(shape))


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


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_matches_reference(multilabel, smoothing):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(B, C)).astype(np.float32) * 3
  labels = make_labels(rng, multilabel=True)
  labels[1] = 0.0  # an unlabelled row keeps its zero loss in single-label mode
  got = label_ce(logits, labels, multilabel=multilabel, smoothing=smoothing)
  want = ref_label_ce(logits, labels, multilabel, smoothing)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # Traced, under vmap over smoothing values, it gives the same numbers.
  traced = jax.vmap(lambda s: losses.label_cross_entropy(logits, labels, smoothing=s))(
    jnp.array([0.0, smoothing])
  )
  np.testing.assert_allclose(traced[1], ref_label_ce(logits, labels, False, smoothing), rtol=RTOL)
  np.testing.assert_allclose(traced[0], ref_label_ce(logits, labels, False), rtol=RTOL)


def test_smoothed_dscmr_label_loss_known_value():
  # One modality pair of perfect predictions: with smoothing s the target is (1 - s) y + s / C,
  # so each prediction misses it by s (1 - 1/C) on its class and s / C on the C - 1 others.
  preds = np.stack([np.eye(C, dtype=np.float32)] * 2)
  s = 0.2
  miss = math.sqrt((s * (1 - 1 / C)) ** 2 + (C - 1) * (s / C) ** 2)
  got = losses.dscmr_label_loss(preds, np.eye(C, dtype=np.float32), smoothing=s)
  np.testing.assert_allclose(got, 2 * miss, rtol=1e-5)
  assert float(losses.dscmr_label_loss(preds, np.eye(C, dtype=np.float32))) == 0.0


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
  # A third modality repeating the images adds image->image cells (d_ap = 0, d_an = |img0 -
  # img1| = 3: 2 each) and a second copy of every image<->text cell: 40 over 12 cells.
  for negative, rng in (("hardest", None), ("random", rng_key(0))):
    got = acmr(np.stack([img, txt]), labels, margin=5.0, negatives=negative, rng=rng)
    np.testing.assert_allclose(got, 4.0, rtol=1e-6)
    got = acmr(np.stack([img, txt, img]), labels, margin=5.0, negatives=negative, rng=rng)
    np.testing.assert_allclose(got, 40.0 / 12.0, rtol=1e-6)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_acmr_hardest_matches_reference(k, multilabel, seed):
  z, labels = make_batch(seed, k, multilabel=multilabel)
  got = acmr(z, labels, margin=2.0, negatives="hardest")
  np.testing.assert_allclose(got, ref_acmr(z, labels, 2.0), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_acmr_random_matches_reference_with_the_same_draws(k, multilabel):
  z, labels = make_batch(2, k, multilabel=multilabel)
  for seed in range(2):
    key = rng_key(seed)
    got = acmr(z, labels, margin=3.0, negatives="random", rng=key)
    want = ref_acmr(z, labels, 3.0, pick=gumbel_pick(key, k * (k - 1)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", KS)
def test_acmr_anchors_without_negative_are_left_out(k):
  z, _ = make_batch(7, k)
  labels = np.eye(C, dtype=np.float32)
  labels[0] = 1.0  # item 0 shares a label with everyone: its cells drop out
  got = acmr(z, labels, margin=1.0, negatives="hardest")
  np.testing.assert_allclose(got, ref_acmr(z, labels, 1.0), rtol=RTOL)
  one_class = np.ones((B, C), np.float32)
  assert float(acmr(z, one_class, margin=1.0, negatives="random", rng=KEY)) == 0.0


@pytest.mark.parametrize("k", KS)
def test_acmr_random_single_valid_negative_matches_reference(k):
  z, labels = one_negative_batch(3, k)
  want = ref_acmr(z, labels, 3.0, pick=lambda cell, i, negs: negs[0])
  for seed in range(3):
    got = acmr(z, labels, margin=3.0, negatives="random", rng=rng_key(seed))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_acmr_random_picks_only_disjoint_negatives_uniformly():
  _, labels = make_batch(4)
  share = labels @ labels.T > 0
  neg_mask = jnp.asarray(~share & ~np.eye(B, dtype=bool))
  keys = jax.random.split(rng_key(0), 4000)
  draw = jax.vmap(lambda key: losses.acmr._random_negative_indices(key, neg_mask, 6))
  picks = np.asarray(jax.jit(draw)(keys))  # [keys, cell, anchor]
  for i in range(B):
    valid = np.flatnonzero(~share[i])
    assert valid.size > 0
    for cell in range(6):
      chosen = picks[:, cell, i]
      assert set(chosen.tolist()) <= set(valid.tolist())
      freq = np.bincount(chosen, minlength=B)[valid] / len(chosen)
      np.testing.assert_allclose(freq, 1.0 / valid.size, atol=0.05)
  # Cells draw independently: with v >= 2 valid negatives two cells agree with probability 1/v.
  several = [i for i in range(B) if np.sum(~share[i]) > 1]
  assert several
  assert np.mean(picks[:, 0, several] == picks[:, 1, several]) < 0.6


ACMR_RANDOM_DRAWS = jax.jit(
  jax.vmap(
    lambda key, z, labels: losses.acmr_triplet_loss(z, labels, margin=3.0, rng=key),
    in_axes=(0, None, None),
  )
)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_acmr_random_expectation_matches_reference(k, multilabel):
  z, labels = make_batch(5, k, multilabel=multilabel)
  keys = jax.random.split(rng_key(1), 4000)
  draws = ACMR_RANDOM_DRAWS(keys, z, labels)
  want = ref_acmr_random_expectation(z, labels, 3.0)
  np.testing.assert_allclose(np.mean(draws), want, rtol=0.01)


def test_acmr_random_is_deterministic_per_key():
  z, labels = make_batch(6, 3)
  keys = jax.random.split(rng_key(8), 4000)
  first = np.asarray(ACMR_RANDOM_DRAWS(keys, z, labels))
  again = np.asarray(ACMR_RANDOM_DRAWS(keys, z, labels))
  np.testing.assert_array_equal(first, again)
  assert len(set(first.tolist())) > 1


def test_acmr_options_are_validated():
  z, labels = make_batch(0)
  with pytest.raises(ConfigError):
    losses.acmr_triplet_loss(z, labels, margin=1.0, negatives="semi-hard")
  with pytest.raises(ValueError):
    losses.acmr_triplet_loss(z, labels, margin=1.0)
  with pytest.raises(AssertionError):
    losses.acmr_triplet_loss(z[:, :3], labels, margin=1.0, negatives="hardest")
  with pytest.raises(AssertionError):
    losses.acmr_triplet_loss(z[:1], labels, margin=1.0, negatives="hardest")
  with pytest.raises(AssertionError):
    losses.acmr_triplet_loss(z[0], labels, margin=1.0, negatives="hardest")


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


@pytest.mark.parametrize("k", KS)
def test_multi_negative_known_value(k):
  basis = np.zeros((B, D), np.float32)
  basis[:, :B] = np.eye(B)
  z = np.stack([basis] * k)
  labels = np.eye(B, C, dtype=np.float32)
  # Every cell: s_ap = 1 and 5 orthogonal negatives (s_an = 0); no same-class item -> intra = 0.
  got = mns(z, labels, tau=0.1, negatives="all", k=5)
  np.testing.assert_allclose(got, math.log1p(5 * math.exp(-10.0)), rtol=1e-5)
  got = mns(z, labels, tau=0.1, negatives="hardest", k=2)
  np.testing.assert_allclose(got, math.log1p(2 * math.exp(-10.0)), rtol=1e-5)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(
  "negatives,top",
  [("all", 5), ("hardest", 1), ("per_class", 5)],
  ids=["all", "hardest", "per_class"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_multi_negative_one_negative_equals_soft_triplet(k, negatives, top, seed):
  z, labels = one_negative_batch(seed, k)
  got = mns(z, labels, tau=0.2, negatives=negatives, k=top, intra_weight=0.0, margin=0.0)
  s_ap, s_an = [], []
  for a, b in ordered_pairs(k):
    for i in range(B):
      s_ap.append(ref_cos(z[a][i], z[b][i]))
      s_an.append(ref_cos(z[a][i], z[b][(i + 3) % B]))
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
MNS_IDS = ["-".join(str(v) for v in c.values()) for c in MNS_CASES]


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("case", MNS_CASES, ids=MNS_IDS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_multi_negative_matches_reference(k, case, multilabel):
  z, labels = make_batch(11, k, multilabel=multilabel)
  got = mns(z, labels, **case)
  want = ref_multi_negative(z, labels, **case)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_multi_negative_with_identity_labels_is_infonce(k, tau):
  # Unlabelled data: every pair is its own class, so the negatives are all the other items.
  z, _ = make_batch(14, k)
  identity = np.eye(B, dtype=np.float32)
  got = mns(z, identity, tau=tau, negatives="all", k=5, margin=0.0)
  np.testing.assert_allclose(got, ref_infonce(z, tau), rtol=RTOL, atol=ATOL)
  # No intra-modal positive exists, so the intra-modal weight is irrelevant.
  no_intra = mns(z, identity, tau=tau, negatives="all", k=5, intra_weight=0.0, margin=0.0)
  np.testing.assert_allclose(got, no_intra, rtol=1e-6)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_multi_negative_hardest_with_large_k_equals_all(k, multilabel):
  z, labels = make_batch(12, k, multilabel=multilabel)
  everything = mns(z, labels, negatives="all", k=5)
  hardest = mns(z, labels, negatives="hardest", k=100)  # beyond B: clamped
  np.testing.assert_allclose(hardest, everything, rtol=1e-6)


@pytest.mark.parametrize("k", KS)
def test_multi_negative_one_class_batch_is_zero(k):
  z, _ = make_batch(13, k)
  labels = np.ones((B, C), np.float32)
  for negatives, top in (("all", 5), ("hardest", 2), ("per_class", 5)):
    assert float(mns(z, labels, negatives=negatives, k=top)) == 0.0


def test_multi_negative_options_are_validated():
  z, labels = make_batch(0)
  with pytest.raises(ConfigError):
    losses.multi_negative_loss(z, labels, negatives="some")
  with pytest.raises(ConfigError):
    losses.multi_negative_loss(z, labels, negatives="hardest", k=0)
  with pytest.raises(AssertionError):
    losses.multi_negative_loss(z[:1], labels)
  with pytest.raises(AssertionError):
    losses.multi_negative_loss(z, labels[:3])


# ----------------------------------------------------------------------------------------------
# MS2GAN
# ----------------------------------------------------------------------------------------------


def make_ms2gan_batch(seed, k, multilabel):
  rng = np.random.default_rng(seed)
  spec = rng.normal(size=(k, B, D)).astype(np.float32)
  shared = rng.normal(size=(k, B, 3)).astype(np.float32)
  return spec, shared, make_labels(rng, multilabel=multilabel)


@pytest.mark.parametrize("k", KS)
def test_ms2gan_known_value(k):
  spec = np.zeros((B, D), np.float32)
  spec[1, 0] = 10.0
  shared = np.zeros((B, 3), np.float32)
  labels = np.zeros((B, C), np.float32)
  labels[0, 0] = labels[1, 1] = 1.0
  spec, shared = np.stack([spec] * k), np.stack([shared] * k)
  # Items 2.. are unlabelled: never positives, negatives of everyone; all sit at the origin, and
  # zero rows stay zero when normalised. Only cross-modal cells have a positive (the anchor's own
  # copy, at d = 0): K - 1 cells per anchor 0 and per anchor 1, all alike, so K does not matter.
  # Normalised, item 1 sits at distance 1 from the rest. Anchor 0: negatives item 1 (d = 1) and
  # the four unlabelled items (d = 0): relu(0 - 1 + 2) = 1 and 4 x 2 -> 9 over 5. Anchor 1: every
  # negative at d = 1 -> 5 over 5. Mean (9 + 5) / 10 = 1.4.
  got = ms2gan(spec, shared, labels, margin=2.0, negatives="all", normalize=True)
  np.testing.assert_allclose(got, 1.4, rtol=1e-6)
  # Batch-hard: anchor 0's closest negative is at 0 -> 2; anchor 1's at 1 -> 1; mean 1.5.
  got = ms2gan(spec, shared, labels, margin=2.0, negatives="hardest", normalize=True)
  np.testing.assert_allclose(got, 1.5, rtol=1e-6)
  # Unnormalised, item 1 sits at distance 100 and beyond the margin: only anchor 0's four
  # unlabelled negatives count -> 8 over 10 triplets; batch-hard (2 + 0) / 2.
  got = ms2gan(spec, shared, labels, margin=2.0, negatives="all", normalize=False)
  np.testing.assert_allclose(got, 0.8, rtol=1e-6)
  got = ms2gan(spec, shared, labels, margin=2.0, negatives="hardest", normalize=False)
  np.testing.assert_allclose(got, 1.0, rtol=1e-6)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("negatives", ["all", "hardest"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_ms2gan_matches_reference(k, negatives, normalize, multilabel):
  spec, shared, labels = make_ms2gan_batch(k, k, multilabel)
  margin = 0.5 if normalize else 1.5
  got = ms2gan(spec, shared, labels, margin=margin, negatives=negatives, normalize=normalize)
  want = ref_ms2gan(spec, shared, labels, margin=margin, negatives=negatives, normalize=normalize)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_ms2gan_normalized_distance_is_scale_free():
  spec, shared, labels = make_ms2gan_batch(3, 3, False)
  base = ms2gan(spec, shared, labels, margin=0.5, negatives="all", normalize=True)
  scaled = ms2gan(40 * spec, 0.1 * shared, labels, margin=0.5, negatives="all", normalize=True)
  np.testing.assert_allclose(scaled, base, rtol=1e-5)


def test_ms2gan_options_are_validated():
  spec, shared, labels = make_ms2gan_batch(0, 2, False)
  with pytest.raises(ConfigError):
    losses.ms2gan_similarity_loss(spec, shared, labels, negatives="semi")
  with pytest.raises(AssertionError):
    losses.ms2gan_similarity_loss(spec, shared[:, :3], labels)
  with pytest.raises(AssertionError):
    losses.ms2gan_similarity_loss(spec[:1], shared[:1], labels)


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


@pytest.mark.parametrize("k", KS)
def test_dscmr_known_values(k):
  labels = np.eye(B, C, dtype=np.float32)
  preds = labels.copy()
  preds[:, 0] += 1.0  # every row is off by exactly 1, in class 0
  np.testing.assert_allclose(dscmr_label(np.stack([preds] * k), labels), k, rtol=1e-6)
  zeros = np.zeros((k, B, D), np.float32)
  # K (K + 1) / 2 unordered pairs, same-modality ones included, each log 2 on zero features.
  want = k * (k + 1) / 2 * math.log(2)
  np.testing.assert_allclose(dscmr_pairwise(zeros, labels), want, rtol=1e-6)
  # Modality 0 sits at (3, 4) from all the others (at 0): K - 1 pairs at distance 5.
  shifted = zeros.copy()
  shifted[0, :, :2] = (3.0, 4.0)
  np.testing.assert_allclose(dscmr_invariance(shifted), 5.0 * (k - 1), rtol=1e-6)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_dscmr_matches_reference(k, multilabel):
  rng = np.random.default_rng(5)
  labels = make_labels(rng, multilabel=multilabel)
  preds = rng.normal(size=(k, B, C)).astype(np.float32)
  z = rng.normal(size=(k, B, D)).astype(np.float32)
  j1, j2, j3 = ref_dscmr(preds, z, labels)
  np.testing.assert_allclose(dscmr_label(preds, labels), j1, rtol=RTOL)
  np.testing.assert_allclose(dscmr_pairwise(z, labels), j2, rtol=RTOL)
  np.testing.assert_allclose(dscmr_invariance(z), j3, rtol=RTOL)


def test_dscmr_shapes_are_validated():
  z, labels = make_batch(0)
  with pytest.raises(AssertionError):
    losses.dscmr_label_loss(z[:, :, :3], labels)
  with pytest.raises(AssertionError):
    losses.dscmr_pairwise_loss(z[:1], labels)
  with pytest.raises(AssertionError):
    losses.dscmr_invariance_loss(z[:1])


# ----------------------------------------------------------------------------------------------
# K = 2 reproduces the two-modality definitions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_two_modalities_reproduce_adversarial_acmr_and_dscmr(multilabel):
  (img, txt), labels = make_batch(21, multilabel=multilabel)
  z = np.stack([img, txt])

  # A two-way softmax is a sigmoid on the logit difference.
  logits = 3 * np.random.default_rng(21).normal(size=(2, B, 2)).astype(np.float32)
  diff = logits[..., 0] - logits[..., 1]
  np.testing.assert_allclose(adversarial(logits), ref2_adversarial(diff[0], diff[1]), rtol=RTOL)

  got = acmr(z, labels, margin=2.0, negatives="hardest")
  np.testing.assert_allclose(got, ref2_acmr(img, txt, labels, 2.0), rtol=RTOL, atol=ATOL)
  # Random negatives: the same draws, gumbel(key, (2, B, B)) with 0 = image->text anchors.
  for seed in range(3):
    key = rng_key(seed)
    got = acmr(z, labels, margin=3.0, negatives="random", rng=key)
    want = ref2_acmr(img, txt, labels, 3.0, pick=gumbel_pick(key, 2))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)

  rng = np.random.default_rng(22)
  preds = rng.normal(size=(2, B, C)).astype(np.float32)
  j1, j2, j3 = ref2_dscmr(preds[0], preds[1], img, txt, labels)
  np.testing.assert_allclose(dscmr_label(preds, labels), j1, rtol=RTOL)
  np.testing.assert_allclose(dscmr_pairwise(z, labels), j2, rtol=RTOL)
  np.testing.assert_allclose(dscmr_invariance(z), j3, rtol=RTOL)


@pytest.mark.parametrize("case", MNS_CASES, ids=MNS_IDS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_two_modalities_reproduce_multi_negative(case, multilabel):
  (img, txt), labels = make_batch(23, multilabel=multilabel)
  got = mns(np.stack([img, txt]), labels, **case)
  want = ref2_multi_negative(img, txt, labels, **case)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("negatives", ["all", "hardest"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_two_modalities_reproduce_unnormalised_ms2gan(negatives, multilabel):
  (spec_img, spec_txt), (shared_img, shared_txt), labels = make_ms2gan_batch(24, 2, multilabel)
  got = ms2gan(
    np.stack([spec_img, spec_txt]),
    np.stack([shared_img, shared_txt]),
    labels,
    margin=1.5,
    negatives=negatives,
    normalize=False,
  )
  want = ref2_ms2gan(spec_img, shared_img, spec_txt, shared_txt, labels, 1.5, negatives)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# Traced numeric options: one compilation serves a population of settings under vmap
# ----------------------------------------------------------------------------------------------

OPTION_VALUES = {
  "tau": np.array([0.05, 0.1, 0.3, 1.0], np.float32),
  "margin": np.array([0.0, 0.2, 0.5, 1.5], np.float32),
  "intra_weight": np.array([0.0, 0.5, 1.0, 2.0], np.float32),
}

# (shared jitted loss, its static options, the numeric options it takes).
TRACED_OPTIONS = {
  "mns_all": (mns, dict(negatives="all", k=5), ("tau", "margin", "intra_weight")),
  "mns_hardest": (mns, dict(negatives="hardest", k=2), ("tau", "margin", "intra_weight")),
  "mns_per_class": (mns, dict(negatives="per_class", k=5), ("tau", "margin", "intra_weight")),
  "acmr_hardest": (acmr, dict(negatives="hardest"), ("margin",)),
  "acmr_random": (acmr, dict(negatives="random", rng=KEY), ("margin",)),
  "ms2gan_all": (ms2gan, dict(negatives="all", normalize=True), ("margin",)),
  "ms2gan_hardest": (ms2gan, dict(negatives="hardest", normalize=False), ("margin",)),
}


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("name", sorted(TRACED_OPTIONS))
def test_traced_options_under_vmap_equal_per_value_results(k, name):
  loss, static, names = TRACED_OPTIONS[name]
  if loss is ms2gan:
    spec, shared, labels = make_ms2gan_batch(25, k, multilabel=True)
    inputs = (spec, shared, labels)
  else:
    inputs = make_batch(25, k, multilabel=True)
  population = jax.jit(
    jax.vmap(lambda *values: loss(*inputs, **static, **dict(zip(names, values, strict=True))))
  )(*(OPTION_VALUES[n] for n in names))
  for index in range(len(population)):
    values = {n: float(OPTION_VALUES[n][index]) for n in names}
    want = loss(*inputs, **static, **values)
    np.testing.assert_allclose(population[index], want, rtol=1e-5, atol=1e-6)
    if loss is mns:
      # Python-float options give the reference value; the traced ones must too.
      ref = ref_multi_negative(*inputs, **static, **values)
      np.testing.assert_allclose(population[index], ref, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# Cross-cutting: jit and vmap parity, finite gradients on degenerate batches
# ----------------------------------------------------------------------------------------------

# Every loss as a function of (z, labels), [K, B, D] and [B, C] with D == C.
STACK_LOSSES = {
  "acmr_random": lambda z, y: losses.acmr_triplet_loss(z, y, margin=1.0, rng=KEY),
  "acmr_hardest": lambda z, y: losses.acmr_triplet_loss(z, y, margin=1.0, negatives="hardest"),
  "mns_all": lambda z, y: losses.multi_negative_loss(z, y, margin=0.1),
  "mns_hardest": lambda z, y: losses.multi_negative_loss(z, y, negatives="hardest", k=2),
  # A literal 0 takes the branch that skips the intra-modal term.
  "mns_per_class": lambda z, y: losses.multi_negative_loss(
    z, y, negatives="per_class", intra_weight=0
  ),
  "ms2gan_all": lambda z, y: losses.ms2gan_similarity_loss(z, z[..., :3], y),
  "ms2gan_hardest": lambda z, y: losses.ms2gan_similarity_loss(
    z, -z[::-1], y, negatives="hardest", normalize=False
  ),
  "large_margin": lambda z, y: losses.large_margin_difference_loss(z[0], z[1]),
  "orthogonality": lambda z, y: losses.orthogonality_difference_loss(z[0], z[1]),
  "dscmr_label": lambda z, y: losses.dscmr_label_loss(z, y),
  "dscmr_pairwise": lambda z, y: losses.dscmr_pairwise_loss(z, y),
  "dscmr_invariance": lambda z, y: losses.dscmr_invariance_loss(z),
  "label_ce": lambda z, y: jnp.mean(losses.label_cross_entropy(z[0], y)),
  "label_bce": lambda z, y: jnp.mean(losses.label_cross_entropy(z[-1], y, multilabel=True)),
  "adversarial": lambda z, y: losses.modality_adversarial_loss(z[..., : z.shape[0]]),
  "confusion": lambda z, y: losses.modality_confusion_loss(z[..., : z.shape[0]]),
}


def degenerate_batches(k):
  z, labels = make_batch(20, k, multilabel=True)
  yield "random", z, labels
  yield "zero_vectors", np.zeros_like(z), labels
  yield "identical_pairs", np.stack([z[0]] * k), labels
  yield "one_class", z, np.ones_like(labels)
  yield "no_labels", z, np.zeros_like(labels)
  everyone = labels.copy()
  everyone[0] = 1.0  # row 0 has no negative
  yield "row_without_negative", z, everyone
  yield "duplicate_items", np.broadcast_to(z[:1, :1], z.shape).copy(), labels


# These see only one or two modalities of the stack: K changes nothing but the compile time.
PER_MODALITY = {"large_margin", "orthogonality", "label_ce", "label_bce"}


@pytest.mark.parametrize(
  "k,name", [(k, n) for n in sorted(STACK_LOSSES) for k in KS if k == 3 or n not in PER_MODALITY]
)
def test_jit_vmap_parity_and_finite_gradients(k, name):
  # One compilation per loss and K: jit(vmap(value_and_grad)) over a stack of ordinary and
  # degenerate batches must equal per-batch calls, with finite values and gradients everywhere.
  # The per-batch calls are eager for the general case K = 3 (jit parity) and jitted for K = 2,
  # where op-by-op dispatch would only repeat the same code at another shape, for seconds.
  fn = STACK_LOSSES[name]
  single = fn if k == 3 else jax.jit(fn)
  cases = list(degenerate_batches(k))
  stacked = [np.stack(parts) for parts in zip(*(c[1:] for c in cases), strict=True)]
  values, grads = jax.jit(jax.vmap(jax.value_and_grad(fn)))(*stacked)
  for index, (case, z, labels) in enumerate(cases):
    assert np.isfinite(values[index]), (name, case)
    assert np.all(np.isfinite(grads[index])), (name, case)
    np.testing.assert_allclose(values[index], single(z, labels), rtol=1e-5, atol=1e-6)

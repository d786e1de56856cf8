"""The train step: the adversarial gradient reaches the encoders with the right sign for K
modalities, skipped non-finite steps, inactive members, traced hyperparameters, and the
population loop equal to single steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscross import config as config_lib
from mscross import data, input_pipeline, models, parallel, population, train_step

C, B = 4, 16
DIMS = {"a": 12, "b": 7, "c": 5}


def small_config(**adv):
  c = config_lib.base_config()
  c.model.encoder_layers = (16,)
  c.model.width = 8
  c.disc.layers = (8, 4)
  c.train.steps = 50
  c.train.batch_size = 8
  c.optim.lr = 1e-3
  for k, v in adv.items():
    c.adv[k] = v
  return c


def spec_of(modalities=("a", "b"), num_classes=C):
  return models.DataSpec(tuple(modalities), tuple(DIMS[m] for m in modalities), num_classes)


def batch_data(seed=0, n=B, modalities=("a", "b"), labelled=True):
  rng = np.random.default_rng(seed)
  batch = {
    "inputs": {m: jnp.asarray(rng.normal(size=(n, DIMS[m])), jnp.float32) for m in modalities}
  }
  if labelled:
    batch["label"] = jnp.asarray(np.eye(C, dtype=np.float32)[rng.integers(0, C, n)])
  return batch


def setup(config, spec, size=1):
  members = population.member_configs(config)[:size]
  keys = population.traced_keys(members)
  net, disc = models.build_models(config, spec)
  txs = train_step.make_optimizers(config)
  state = train_step.init_population(
    net,
    disc,
    spec,
    txs,
    population.member_seeds(members),
    population.stacked_hparams(members, keys),
  )
  return net, disc, txs, state


def member(state, m=0):
  return jax.tree.map(lambda x: x[m], state)


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("mode", ["alternating", "reversal"])
@pytest.mark.parametrize("modalities", [("a", "b"), ("a", "b", "c")])
def test_adversarial_gradient_reaches_encoders_with_opposite_sign(mode, modalities):
  config = small_config(mode=mode)
  net, disc, _, state = setup(config, spec_of(modalities))
  obj = train_step.make_objectives(config, net, disc)
  batch, rng, lam = batch_data(modalities=modalities), jax.random.PRNGKey(3), 0.7
  st = member(state)
  params, h = st.params, st.hparams

  if mode == "alternating":
    grad = lambda lam: jax.grad(obj.generator, has_aux=True)(
      params["gen"], params["disc"], batch, rng, lam, h
    )[0]
    g_lam, g_0 = grad(lam), grad(0.0)
  else:
    full = jax.grad(obj.reversal, has_aux=True)(params, batch, rng, lam, h)[0]
    g_lam = full["gen"]
    g_0 = jax.grad(obj.reversal, has_aux=True)(params, batch, rng, 0.0, h)[0]["gen"]
    # The discriminator itself descends the plain modality loss.
    emb = obj.forward(params["gen"], batch)["emb"]
    d_grad = jax.grad(obj.adversarial)(params["disc"], emb)
    np.testing.assert_allclose(flat(full["disc"]), flat(d_grad), rtol=1e-5, atol=1e-7)

  def l_adv(gen):
    return obj.adversarial(params["disc"], obj.forward(gen, batch)["emb"])

  encoder_adv = flat(g_lam) - flat(g_0)  # the adversarial term's share of the encoders' gradient
  disc_direction = flat(jax.grad(l_adv)(params["gen"]))
  # Non-zero: the adversarial gradient does reach the encoders (it never does in the ACMR demo).
  assert np.linalg.norm(encoder_adv) > 1e-6
  # Opposite sign: the encoders move to INCREASE the loss the discriminator decreases.
  assert np.dot(encoder_adv, disc_direction) < 0
  np.testing.assert_allclose(encoder_adv, -lam * disc_direction, rtol=1e-3, atol=1e-6)


def test_discriminator_learns_to_tell_three_modalities_apart():
  config = small_config(mode="alternating", schedule="constant", weight=0.0)
  config.optim.disc_lr = 1e-2
  # weight 0: the generator ignores D, so D faces a fixed task and its loss must fall.
  modalities = ("a", "b", "c")
  net, disc, txs, state = setup(config, spec_of(modalities))
  step = jax.jit(train_step.make_step(config, net, disc, txs, 50))
  batch = batch_data(modalities=modalities)
  # Separable modalities: a constant offset per modality.
  batch["inputs"] = {m: x + 3.0 * i for i, (m, x) in enumerate(batch["inputs"].items())}
  st, first = member(state), None
  for _ in range(60):
    st, m = step(st, batch)
    first = float(m["loss_disc"]) if first is None else first
  assert float(m["loss_disc"]) < 0.7 * first


def test_non_finite_step_is_skipped_and_counted():
  config = small_config()
  net, disc, txs, state = setup(config, spec_of())
  step = jax.jit(train_step.make_step(config, net, disc, txs, 50))
  good_batch = batch_data()
  bad = {**good_batch, "inputs": {**good_batch["inputs"]}}
  bad["inputs"]["a"] = bad["inputs"]["a"].at[0, 0].set(jnp.nan)
  st = member(state)
  new, _ = step(st, bad)
  np.testing.assert_array_equal(flat(new.params), flat(st.params))
  assert int(new.nonfinite_run) == 1 and int(new.skipped) == 1 and int(new.step) == 1
  new, _ = step(new, bad)
  assert int(new.nonfinite_run) == 2
  good, _ = step(new, good_batch)
  assert int(good.nonfinite_run) == 0 and int(good.skipped) == 2
  assert not np.array_equal(flat(good.params), flat(st.params))


def test_inactive_member_takes_no_step():
  config = small_config()
  net, disc, txs, state = setup(config, spec_of())
  step = jax.jit(train_step.make_step(config, net, disc, txs, 50))
  st = member(state).replace(active=jnp.asarray(False))
  new, _ = step(st, batch_data())
  np.testing.assert_array_equal(flat(new.params), flat(st.params))
  np.testing.assert_array_equal(flat(new.opt_state), flat(st.opt_state))
  assert int(new.step) == 1 and int(new.skipped) == 0


def test_learning_rate_is_traced_from_the_state():
  # One compiled step serves every learning rate: the update scales with the state's lr.
  config = small_config(enabled=False)
  net, disc, txs, state = setup(config, spec_of())
  step = jax.jit(train_step.make_step(config, net, disc, txs, 50))
  st = member(state)
  batch = batch_data()
  moves = []
  for lr in (1e-3, 2e-3):
    h = dict(st.hparams, **{"optim.lr": jnp.float32(lr)})
    new, _ = step(st.replace(hparams=h), batch)
    moves.append(flat(new.params["gen"]) - flat(st.params["gen"]))
  # Adam's first step is lr * sign-like(g): doubling lr doubles the move exactly.
  # (to the float32 rounding of params of magnitude ~1)
  np.testing.assert_allclose(moves[1], 2 * moves[0], rtol=1e-5, atol=2e-7)
  assert step._cache_size() == 1


def test_unlabelled_batch_trains_with_identity_labels():
  config = small_config(enabled=False)
  config.loss = dict(multi_negative=dict(weight=1.0, tau=0.1, intra_weight=0.0))
  spec = spec_of(num_classes=0)
  net, disc, txs, state = setup(config, spec)
  step = jax.jit(train_step.make_step(config, net, disc, txs, 50))
  st, batch = member(state), batch_data(labelled=False)
  losses = []
  for _ in range(30):
    st, m = step(st, batch)
    losses.append(float(m["loss_multi_negative"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  # With identity labels and no margin, the loss is the symmetric InfoNCE of the two views: at a
  # temperature so high that every item is as likely as its pair, log(B) (B - 1 negatives).
  hot = dict(st.hparams, **{"loss.multi_negative.tau": jnp.float32(1e4)})
  _, m = step(st.replace(hparams=hot), batch)
  assert abs(float(m["loss_multi_negative"]) - np.log(B)) < 1e-3


def _split(n=40, seed=1):
  rng = np.random.default_rng(seed)
  return data.Split(
    features={m: rng.normal(size=(n, DIMS[m])).astype(np.float32) for m in ("a", "b")},
    label=np.eye(C, dtype=np.float32)[rng.integers(0, C, n)],
    ids=np.arange(n).astype(str),
    class_names=tuple("wxyz"),
  )


def test_population_loop_equals_single_steps_and_is_deterministic():
  config = small_config()
  config.population.size = 3
  spec = spec_of()
  net, disc, txs, _ = setup(config, spec, size=3)
  split = _split()
  step_fn = train_step.make_step(config, net, disc, txs, 50, axis_name=parallel.AXIS)
  mesh = parallel.make_mesh(1)
  loop = parallel.TrainLoop(step_fn, mesh, len(split), 8, feed="device")
  data_ = loop.data(split)

  def fresh():
    return parallel.replicate(setup(config, spec, size=3)[3], mesh)

  # 7 steps cross an epoch boundary (5 steps per epoch): a new permutation inside the loop.
  a, _ = loop(fresh(), data_, 7)
  b, _ = loop(fresh(), data_, 7)
  np.testing.assert_array_equal(flat(a.params), flat(b.params))  # bitwise, same seeds

  # Member 2 alone, stepped one jitted step at a time on the reference batch indices.
  single = jax.jit(train_step.make_step(config, net, disc, txs, 50))
  st = member(setup(config, spec, size=3)[3], 2)
  arrays = input_pipeline.device_arrays(split)
  for i in range(7):
    idx = input_pipeline.batch_indices(st.data_key, jnp.asarray(i), len(split), 8)
    st, _ = single(st, input_pipeline.gather_batch(arrays, idx))
  np.testing.assert_allclose(flat(st.params), flat(member(a, 2).params), rtol=1e-5, atol=1e-6)
  # Members differ (different seeds) ...
  assert not np.allclose(flat(member(a, 0).params), flat(member(a, 1).params))

  # Two loops of 3 and 4 steps = one of 7 (what resuming relies on).
  c, _ = loop(fresh(), data_, 3)
  c, _ = loop(c, data_, 4)
  np.testing.assert_array_equal(flat(c.params), flat(a.params))


def test_batch_indices_cover_each_epoch_once():
  key = jax.random.PRNGKey(0)
  n, bsz = 30, 7  # 4 steps per epoch, 2 rows dropped
  batches = [input_pipeline.batch_indices(key, jnp.asarray(s), n, bsz) for s in range(4)]
  epoch = np.concatenate([np.asarray(b) for b in batches])
  assert len(set(epoch.tolist())) == 28
  nxt = np.asarray(input_pipeline.batch_indices(key, jnp.asarray(4), n, bsz))
  assert not np.array_equal(nxt, epoch[:7])  # a new permutation each epoch


def test_dann_schedule_and_disabled_adversary():
  config = small_config(schedule="dann", weight=2.0)
  h = {"adv.weight": jnp.float32(2.0)}
  lam0 = train_step.adversarial_lambda(config, h, jnp.asarray(0), 100)
  lam_end = train_step.adversarial_lambda(config, h, jnp.asarray(100), 100)
  assert float(lam0) == 0.0
  np.testing.assert_allclose(float(lam_end), 2.0 * (2 / (1 + np.exp(-10)) - 1), rtol=1e-6)
  off = small_config(enabled=False)
  assert float(train_step.adversarial_lambda(off, h, jnp.asarray(50), 100)) == 0.0

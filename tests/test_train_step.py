"""The train step: the adversarial gradient reaches the encoders with the right sign, skipped
non-finite steps, determinism, and chunked steps equal single steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscross import config as config_lib
from mscross import input_pipeline, models, train_step
from mscross.errors import ConfigError

D_IMG, D_TXT, C, B = 12, 7, 4, 16


def small_config(**adv):
  c = config_lib.base_config()
  c.model.img_layers = (16, 8)
  c.model.txt_layers = (16, 8)
  c.disc.layers = (8, 4)
  c.train.steps = 50
  c.optim.lr = 1e-3
  for k, v in adv.items():
    c.adv[k] = v
  return c


def batch_data(seed=0, n=B):
  rng = np.random.default_rng(seed)
  y = np.eye(C, dtype=np.float32)[rng.integers(0, C, n)]
  return {
    "image": jnp.asarray(rng.normal(size=(n, D_IMG)).astype(np.float32)),
    "text": jnp.asarray(rng.normal(size=(n, D_TXT)).astype(np.float32)),
    "label": jnp.asarray(y),
  }


def setup(config):
  net, disc = models.build_models(config, C)
  txs = train_step.make_optimizers(config)
  state = train_step.init_state(config, net, disc, D_IMG, D_TXT, txs)
  return net, disc, txs, state


def flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def adversarial_only_grad(obj, params, batch, rng):
  """d L_adv / d gen params: the direction in which D's loss grows."""

  def l_adv(gen):
    out = obj.forward(gen, batch)
    return obj.adversarial(params["disc"], out["img"], out["txt"])

  return jax.grad(l_adv)(params["gen"])


@pytest.mark.parametrize("mode", ["alternating", "reversal"])
def test_adversarial_gradient_reaches_encoders_with_opposite_sign(mode):
  config = small_config(mode=mode)
  net, disc, _, state = setup(config)
  obj = train_step.make_objectives(config, net, disc)
  batch, rng, lam = batch_data(), jax.random.PRNGKey(3), 0.7
  params = state.params

  if mode == "alternating":
    g_lam = jax.grad(obj.generator, has_aux=True)(params["gen"], params["disc"], batch, rng, lam)[0]
    g_0 = jax.grad(obj.generator, has_aux=True)(params["gen"], params["disc"], batch, rng, 0.0)[0]
  else:
    full = jax.grad(obj.reversal, has_aux=True)(params, batch, rng, lam)[0]
    g_lam = full["gen"]
    g_0 = jax.grad(obj.reversal, has_aux=True)(params, batch, rng, 0.0)[0]["gen"]
    # The discriminator itself descends the plain modality loss.
    out = obj.forward(params["gen"], batch)
    d_grad = jax.grad(obj.adversarial)(params["disc"], out["img"], out["txt"])
    np.testing.assert_allclose(flat(full["disc"]), flat(d_grad), rtol=1e-5, atol=1e-7)

  encoder_adv = flat(g_lam) - flat(g_0)  # the adversarial term's share of the encoders' gradient
  disc_direction = flat(adversarial_only_grad(obj, params, batch, rng))
  # Non-zero: the adversarial gradient does reach the encoders (it never does in the ACMR demo).
  assert np.linalg.norm(encoder_adv) > 1e-6
  # Opposite sign: the encoders move to INCREASE the loss the discriminator decreases.
  assert np.dot(encoder_adv, disc_direction) < 0
  np.testing.assert_allclose(encoder_adv, -lam * disc_direction, rtol=1e-3, atol=1e-6)


def test_discriminator_learns_in_alternating_steps():
  config = small_config(mode="alternating", schedule="constant", weight=0.0)
  # weight 0: the generator ignores D, so D faces a fixed task and its loss must fall.
  net, disc, txs, state = setup(config)
  step = jax.jit(train_step.make_train_step(config, net, disc, txs, 50))
  batch = batch_data()
  batch = dict(batch, image=batch["image"] + 3.0)  # make modalities separable for D
  first = None
  for _ in range(40):
    state, m = step(state, batch)
    first = float(m["loss_disc"]) if first is None else first
  assert float(m["loss_disc"]) < first


def test_non_finite_step_is_skipped_and_counted():
  config = small_config()
  net, disc, txs, state = setup(config)
  step = jax.jit(train_step.make_train_step(config, net, disc, txs, 50))
  bad = dict(batch_data(), image=batch_data()["image"].at[0, 0].set(jnp.nan))
  new, _ = step(state, bad)
  np.testing.assert_array_equal(flat(new.params), flat(state.params))
  assert int(new.nonfinite_run) == 1 and int(new.skipped) == 1 and int(new.step) == 1
  new, _ = step(new, bad)
  assert int(new.nonfinite_run) == 2
  good, _ = step(new, batch_data())
  assert int(good.nonfinite_run) == 0 and int(good.skipped) == 2
  assert not np.array_equal(flat(good.params), flat(state.params))


def test_chunk_equals_single_steps_and_is_deterministic():
  config = small_config()
  net, disc, txs, _ = setup(config)
  step_fn = train_step.make_train_step(config, net, disc, txs, 50)
  data = batch_data(seed=1, n=40)
  key = jax.random.PRNGKey(9)
  chunk = train_step.make_train_chunk(step_fn, key, 40, 8)

  def fresh():
    return setup(config)[3]

  a, _ = chunk(fresh(), data, 7)
  b, _ = chunk(fresh(), data, 7)
  np.testing.assert_array_equal(flat(a.params), flat(b.params))  # bitwise, same seed

  s = fresh()
  jstep = jax.jit(step_fn)
  for i in range(7):
    idx = input_pipeline.batch_indices(key, jnp.asarray(i), 40, 8)
    s, _ = jstep(s, input_pipeline.gather_batch(data, idx))
  np.testing.assert_allclose(flat(s.params), flat(a.params), rtol=1e-6, atol=1e-7)

  # Two chunks of 3 and 4 steps = one chunk of 7 (what resuming relies on).
  c, _ = chunk(fresh(), data, 3)
  c, _ = chunk(c, data, 4)
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
  lam0 = train_step.adversarial_lambda(config, jnp.asarray(0), 100)
  lam_end = train_step.adversarial_lambda(config, jnp.asarray(100), 100)
  assert float(lam0) == 0.0
  np.testing.assert_allclose(float(lam_end), 2.0 * (2 / (1 + np.exp(-10)) - 1), rtol=1e-6)
  off = small_config(enabled=False)
  assert float(train_step.adversarial_lambda(off, jnp.asarray(50), 100)) == 0.0


def test_bad_adversarial_mode_is_a_config_error():
  config = small_config(mode="sideways")
  net, disc, txs, _ = setup(config)
  with pytest.raises(ConfigError, match="adv.mode"):
    train_step.make_train_step(config, net, disc, txs, 10)

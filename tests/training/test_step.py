"""The train step: the adversarial gradient reaches the encoders with the right sign for K
modalities, skipped non-finite steps, inactive members, traced hyperparameters, and the
population loop equal to single steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import batch_of, flat, member, program_of, small_config, spec_of, synthetic_split

from mscross.methods import losses
from mscross.training import batches, loop
from mscross.training import step as step_lib

B = 16


def adv_config(**adv):
  """ACMR's small config with `adv.<key>` settings."""
  return small_config("acmr", {f"adv.{k}": v for k, v in adv.items()})


def setup(config, spec):
  """(program, initial population state) of `config` on data of `spec`."""
  prog = program_of(config, spec)
  return prog, prog.init_state()


@pytest.mark.parametrize("mode", ["alternating", "reversal"])
@pytest.mark.parametrize("modalities", [("a", "b"), ("a", "b", "c")])
def test_adversarial_gradient_reaches_encoders_with_opposite_sign(mode, modalities):
  config = adv_config(mode=mode)
  prog, state = setup(config, spec_of(modalities))
  obj = step_lib.make_objectives(prog.plan, prog.net, prog.disc)
  batch, rng, lam = batch_of(B, modalities), jax.random.PRNGKey(3), 0.7
  st = member(state)
  params, h = st.params, prog.plan.hparams.inside(st.hparams)

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


@pytest.mark.parametrize("modalities", [("a", "b"), ("a", "b", "c")])
def test_confusion_gradient_is_that_of_the_confusion_term(modalities):
  prog, state = setup(adv_config(generator_loss="confusion"), spec_of(modalities))
  obj = step_lib.make_objectives(prog.plan, prog.net, prog.disc)
  batch, rng, lam = batch_of(B, modalities), jax.random.PRNGKey(3), 0.7
  st = member(state)
  params, h = st.params, prog.plan.hparams.inside(st.hparams)
  grad = lambda lam: jax.grad(obj.generator, has_aux=True)(
    params["gen"], params["disc"], batch, rng, lam, h
  )
  (g_lam, aux), (g_0, _) = grad(lam), grad(0.0)

  def l_conf(gen):
    logits = prog.disc.apply({"params": params["disc"]}, obj.forward(gen, batch)["emb"])
    return losses.modality_confusion_loss(logits)

  # The encoders DESCEND the confusion term (weighted by lam), and it is the logged loss_adv.
  encoder_adv = flat(g_lam) - flat(g_0)
  assert np.linalg.norm(encoder_adv) > 1e-6
  np.testing.assert_allclose(
    encoder_adv, lam * flat(jax.grad(l_conf)(params["gen"])), rtol=1e-3, atol=1e-6
  )
  np.testing.assert_allclose(aux[1], l_conf(params["gen"]), rtol=1e-6)


def test_discriminator_learns_to_tell_three_modalities_apart():
  config = adv_config(mode="alternating", schedule="constant", weight=0.0)
  config.optim.disc_lr = 1e-2
  # weight 0: the generator ignores D, so D faces a fixed task and its loss must fall.
  modalities = ("a", "b", "c")
  prog, state = setup(config, spec_of(modalities))
  step = jax.jit(prog.member_step())
  batch = batch_of(B, modalities)
  # Separable modalities: a constant offset per modality.
  batch["inputs"] = {m: x + 3.0 * i for i, (m, x) in enumerate(batch["inputs"].items())}
  st, first = member(state), None
  for _ in range(60):
    st, m = step(st, batch)
    first = float(m["loss_disc"]) if first is None else first
  assert float(m["loss_disc"]) < 0.7 * first


def test_non_finite_step_is_skipped_and_counted():
  config = adv_config()
  prog, state = setup(config, spec_of())
  step = jax.jit(prog.member_step())
  good_batch = batch_of(B)
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
  config = adv_config()
  prog, state = setup(config, spec_of())
  step = jax.jit(prog.member_step())
  st = member(state).replace(active=jnp.asarray(False))
  new, _ = step(st, batch_of(B))
  np.testing.assert_array_equal(flat(new.params), flat(st.params))
  np.testing.assert_array_equal(flat(new.opt_state), flat(st.opt_state))
  assert int(new.step) == 1 and int(new.skipped) == 0


def test_learning_rate_is_traced_from_the_state():
  # One compiled step serves every learning rate: the update scales with the state's lr.
  config = adv_config(enabled=False)
  prog, state = setup(config, spec_of())
  step = jax.jit(prog.member_step())
  st = member(state)
  batch = batch_of(B)
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
  config = adv_config(enabled=False)
  config.loss = dict(multi_negative=dict(weight=1.0, tau=0.1, intra_weight=0.0))
  spec = spec_of(num_classes=0)
  prog, state = setup(config, spec)
  step = jax.jit(prog.member_step())
  st, batch = member(state), batch_of(B, labelled=False)
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


def test_population_loop_equals_single_steps_and_is_deterministic():
  config = adv_config()
  config.population.size = 3
  split = synthetic_split(40, seed=1)
  prog = program_of(config, spec_of(), len(split))
  train_loop = prog.loop
  data_ = train_loop.data(split)

  def fresh():
    return loop.replicate(prog.init_state(), prog.mesh)

  # 7 steps cross an epoch boundary (5 steps per epoch): a new permutation inside the loop.
  a, _ = train_loop(fresh(), data_, 7)
  b, _ = train_loop(fresh(), data_, 7)
  np.testing.assert_array_equal(flat(a.params), flat(b.params))  # bitwise, same seeds

  # Member 2 alone, stepped one jitted step at a time on the reference batch indices.
  single = jax.jit(prog.member_step())
  st = member(prog.init_state(), 2)
  arrays = batches.device_arrays(split)
  for i in range(7):
    idx = batches.batch_indices(st.data_key, jnp.asarray(i), len(split), 8)
    st, _ = single(st, batches.gather_batch(arrays, idx))
  np.testing.assert_allclose(flat(st.params), flat(member(a, 2).params), rtol=1e-5, atol=1e-6)
  # Members differ (different seeds) ...
  assert not np.allclose(flat(member(a, 0).params), flat(member(a, 1).params))

  # Two loops of 3 and 4 steps = one of 7 (what resuming relies on).
  c, _ = train_loop(fresh(), data_, 3)
  c, _ = train_loop(c, data_, 4)
  np.testing.assert_array_equal(flat(c.params), flat(a.params))


def test_batch_indices_cover_each_epoch_once():
  key = jax.random.PRNGKey(0)
  n, bsz = 30, 7  # 4 steps per epoch, 2 rows dropped
  rows = [batches.batch_indices(key, jnp.asarray(s), n, bsz) for s in range(4)]
  epoch = np.concatenate([np.asarray(b) for b in rows])
  assert len(set(epoch.tolist())) == 28
  nxt = np.asarray(batches.batch_indices(key, jnp.asarray(4), n, bsz))
  assert not np.array_equal(nxt, epoch[:7])  # a new permutation each epoch


def test_dann_schedule_and_disabled_adversary():
  plan = program_of(adv_config(schedule="dann", weight=2.0), spec_of()).plan
  h = {"adv.weight": jnp.float32(2.0), "adv.ramp_steps": 0.0, "train.steps": jnp.float32(100)}
  lam0 = step_lib.adversarial_lambda(plan, h, jnp.asarray(0))
  lam_end = step_lib.adversarial_lambda(plan, h, jnp.asarray(100))
  assert float(lam0) == 0.0
  np.testing.assert_allclose(float(lam_end), 2.0 * (2 / (1 + np.exp(-10)) - 1), rtol=1e-6)
  # A ramp of its own: the weight is reached at ramp_steps, whatever the step cap.
  ramped = {**h, "adv.ramp_steps": jnp.float32(20), "train.steps": jnp.float32(10_000)}
  at = lambda s: float(step_lib.adversarial_lambda(plan, ramped, jnp.asarray(s)))
  np.testing.assert_allclose(at(6), 2.0 * (2 / (1 + np.exp(-3)) - 1), rtol=1e-6)
  np.testing.assert_allclose(at(20), float(lam_end), rtol=1e-6)
  assert at(500) == at(20)
  off = program_of(adv_config(enabled=False), spec_of()).plan
  assert float(step_lib.adversarial_lambda(off, h, jnp.asarray(50))) == 0.0


def test_decoupled_weight_decay_shrinks_kernels_by_lr_times_decay():
  # AdamW: the same Adam move, minus lr * decay * weight on every kernel and nothing on biases.
  decay, lr = 0.1, 1e-3
  moved = {}
  for wd in (0.0, decay):
    config = adv_config(enabled=False)
    config.optim.weight_decay = wd
    prog, state = setup(config, spec_of())
    st = member(state)
    new, _ = jax.jit(prog.member_step())(st, batch_of(B))
    moved[wd] = (st.params["gen"], new.params["gen"])
  start, without = moved[0.0]
  _, decayed = moved[decay]
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  for is_kernel, w0, w_plain, w_decayed in zip(
    jax.tree.leaves(losses.kernel_mask(start)),
    leaves(start),
    leaves(without),
    leaves(decayed),
    strict=True,
  ):
    want = w_plain - (lr * decay * w0 if is_kernel else 0.0)
    np.testing.assert_allclose(w_decayed, want, rtol=1e-5, atol=1e-7)


def test_the_weights_average_follows_the_taken_steps():
  config = adv_config(enabled=False)
  config.train.ema_decay = 0.9
  prog, state = setup(config, spec_of())
  assert prog.plan.ema
  st, step = member(state), jax.jit(prog.member_step())
  want = flat(st.params["gen"])
  np.testing.assert_array_equal(flat(st.ema), want)  # it starts at the initial weights
  for i in range(4):
    st, _ = step(st, batch_of(B, seed=i))
    want = 0.9 * want + 0.1 * flat(st.params["gen"])
  np.testing.assert_allclose(flat(st.ema), want, rtol=1e-5, atol=1e-7)
  # Off (the default), the state carries no average at all: checkpoints stay as they were.
  assert member(setup(adv_config(enabled=False), spec_of())[1]).ema is None


def test_dropout_trains_on_dropped_inputs_and_evaluates_on_all_of_them():
  base = adv_config(enabled=False)
  dropped = adv_config(enabled=False)
  dropped.model.dropout_input, dropped.model.dropout_hidden = 0.5, 0.5
  (prog_a, state_a), (prog_b, state_b) = setup(base, spec_of()), setup(dropped, spec_of())
  st_a, st_b = member(state_a), member(state_b)
  np.testing.assert_array_equal(flat(st_a.params), flat(st_b.params))  # the same initial model
  batch = batch_of(B)
  _, m_a = jax.jit(prog_a.member_step())(st_a, batch)
  _, m_b = jax.jit(prog_b.member_step())(st_b, batch)
  assert float(m_a["loss_emb"]) != float(m_b["loss_emb"])
  # Evaluation embeds without dropout: the same params give the same embeddings.
  inputs = batch["inputs"]
  mix = lambda prog: [x[:1] for x in prog.mix]
  gen = jax.tree.map(lambda x: x[None], st_a.params["gen"])
  np.testing.assert_array_equal(
    np.asarray(prog_a.embed(gen, inputs, *mix(prog_a))),
    np.asarray(prog_b.embed(gen, inputs, *mix(prog_b))),
  )

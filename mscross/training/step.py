"""The train state and the one training step shared by every method.

The adversarial game (docs/methods.md): the discriminator D minimises the modality-classification
loss L_adv (softmax cross-entropy over the K modalities) on the common embeddings; the generator
(encoders, common net, classifier) minimises its embedding loss L_emb MINUS lam * L_adv. Two
equivalent implementations, chosen by `config.adv.mode`:

* "alternating": a generator step on `params["gen"]` with D frozen, then `config.adv.d_steps`
  discriminator steps on `params["disc"]` with the (updated) generator frozen;
* "reversal": one step on both subtrees through a gradient-reversal layer, which hands the
  encoders -lam times the gradient D receives.

With `adv.generator_loss="confusion"` (alternating steps only) the generator instead minimises
L_emb PLUS lam times the cross-entropy of D's predictions against the uniform distribution
(`losses.modality_confusion_loss`): the minimax term's gradient vanishes once D is confident
and right, this one does not. `loss_adv` in the step metrics is then that term.

lam follows the DANN schedule 2 / (1 + exp(-10 p)) - 1 of training progress p (or stays
constant), times `adv.weight`. A step whose loss or gradients are not finite is skipped: the
member keeps its old params and optimiser state and counts the skip. A member whose `active`
flag is off (stopped by patience, divergence or pruning) takes no step at all.

`make_step` builds the step of ONE member from the run plan (`mscross.training.plan`);
`mscross.training.loop` vmaps it over the population axis of the state. The continuous
hyperparameters (learning rates, loss weights and float options, the adversary's weight, the
run's length) are read from `state.hparams`, traced, so members can differ in them under one
compilation: once per step, `plan.hparams.inside(state.hparams)` gives every value the step
and its objectives use.

Data parallelism (`axis_name`, run under `jax.shard_map` by `mscross.training.loop`): the state is
replicated; each device runs the networks on its own shard of the global batch; the network
outputs and the labels are all-gathered (tiled), so every loss term, all-pairs negative mining
included, sees the global batch exactly as one device would; the loss is then computed
redundantly, identically, on every device.

Gradient scaling (shard_map with `check_vma=False`, i.e. per-device gradients as under pmap): the
transpose of the tiled all_gather is a reduce-scatter that SUMS the N identical cotangents of the
redundant losses, so device i's gradient is N * g_i + g_p, where g_i is the global loss's
gradient through shard i's outputs (sum_i g_i = the single-device gradient of the batch terms)
and g_p that of the parameter-only terms (the Frobenius regulariser), computed once per device.
`lax.pmean` then gives exactly sum_i g_i + g_p, the single-device gradient: no extra factor is
needed. (Measured on 8 devices: psum would scale both parts by 8; under shard_map's default
`check_vma=True`, JAX inserts that psum itself and a pmean after it leaves the factor 8 in place.
Adam nearly hides a uniform factor, gradient clipping does not.)
The step's `ok` flag is reduced with `pmin`, so replicas skip a non-finite step together and
never diverge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mscross.methods import losses, models
from mscross.methods.models import CrossModalNet, DataSpec, ModalityDiscriminator
from mscross.training.plan import ActiveTerm, Optimiser, RunPlan


@flax.struct.dataclass
class TrainState:
  """The state of one member; the population's state stacks every leaf on a leading axis."""

  step: jax.Array  # int32: steps taken (skipped and inactive ones included)
  params: dict  # {"gen": generator params, "disc": discriminator params}
  opt_state: dict  # {"gen": ..., "disc": ...}, Adam moments per subtree
  rng: jax.Array  # base PRNG key (uint32[2]); step keys are fold_in(rng, step)
  data_key: jax.Array  # the key of this member's batch order
  hparams: dict  # {dotted config key: float32}: the traced hyperparameters
  nonfinite_run: jax.Array  # int32: consecutive skipped (non-finite) steps
  skipped: jax.Array  # int32: all skipped steps
  active: jax.Array  # bool: False once the member has stopped
  # The generator's weights averaged over the steps (`train.ema_decay`); None when off, which
  # leaves the state (and its checkpoints) as without the option.
  ema: dict | None = None


def make_optimizers(o: Optimiser) -> dict[str, optax.GradientTransformation]:
  """Adam's scaling for the generator and for the discriminator, each over its own subtree; the
  learning rates are applied in the step from the traced `hparams`."""
  txs = {}
  for name in ("gen", "disc"):
    tx = optax.scale_by_adam(b1=o.b1, b2=o.b2)
    if o.grad_clip:
      tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    txs[name] = tx
  return txs


def init_member(
  net: CrossModalNet,
  disc: ModalityDiscriminator,
  spec: DataSpec,
  txs: dict,
  seed: jax.Array,
  hparams: dict,
  *,
  ema: bool = False,
) -> TrainState:
  """The initial state of one member (traceable: vmap it over seeds and hparams); `ema` starts
  the weights' average at the initial generator."""
  root = jax.random.PRNGKey(seed)
  k_gen, k_disc = jax.random.split(jax.random.fold_in(root, 0))
  dummy = {m: jnp.zeros((2, d)) for m, d in zip(spec.modalities, spec.dims, strict=True)}
  gen = net.init(k_gen, dummy)["params"]
  width = jax.eval_shape(net.apply, {"params": gen}, dummy)["emb"].shape[-1]
  dparams = disc.init(k_disc, jnp.zeros((2, width)))["params"]
  params = {"gen": gen, "disc": dparams}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state={k: txs[k].init(params[k]) for k in ("gen", "disc")},
    rng=jax.random.fold_in(root, 1),
    data_key=jax.random.fold_in(root, 2),
    hparams=dict(hparams),
    nonfinite_run=jnp.zeros((), jnp.int32),
    skipped=jnp.zeros((), jnp.int32),
    active=jnp.ones((), bool),
    ema=jax.tree.map(jnp.copy, gen) if ema else None,
  )


def init_population(net, disc, spec, txs, seeds, hparams: dict, *, ema: bool = False):
  """The stacked initial state of P members: seeds [P] int, hparams {key: [P]}."""
  member = lambda s, h: init_member(net, disc, spec, txs, s, h, ema=ema)
  seeds = jnp.asarray(seeds, jnp.uint32)
  if seeds.shape[0] == 1:
    # One member is traced without vmap's batching interpreter, which about doubles the trace.
    build = lambda s, h: jax.tree.map(
      lambda x: x[None], member(s[0], {k: v[0] for k, v in h.items()})
    )
  else:
    build = jax.vmap(member)
  # One compiled program: op by op, every initialiser op is compiled on its own (3x slower here).
  return jax.jit(build)(seeds, hparams)


def adversarial_lambda(plan: RunPlan, values: dict, step: jax.Array) -> jax.Array:
  """lam of `step`, from the step's hyperparameters `values` (`plan.hparams.inside`): the
  adversary's weight, its ramp's length (`adv.ramp_steps`, 0: the run's length) and the run's
  length, all traced, so another step cap or ramp reuses the compiled program."""
  if not plan.adversarial:
    return jnp.zeros((), jnp.float32)
  weight = values["adv.weight"]
  if plan.adversary.schedule == "dann":
    ramp = jnp.asarray(values["adv.ramp_steps"], jnp.float32)
    total = jnp.where(ramp > 0, ramp, jnp.asarray(values["train.steps"], jnp.float32))
    return weight * losses.dann_lambda(step.astype(jnp.float32) / jnp.maximum(total, 1.0))
  return weight * jnp.ones((), jnp.float32)


def embedding_loss(
  terms: tuple[ActiveTerm, ...], values: dict, out, batch, *, params, rng
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the active terms, and each unweighted term for logging; the weights and
  float options come from the step's hyperparameters `values` (`plan.hparams.inside`)."""
  parts, total = {}, jnp.zeros((), jnp.float32)
  for i, t in enumerate(terms):
    parts[t.name] = t.fn(
      out, batch, params=params, rng=jax.random.fold_in(rng, i), **t.options(values)
    )
    total = total + t.weight(values) * parts[t.name]
  return total, parts


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def all_gather_batch(out: dict, labels, axis_name: str | None):
  """Every device's shard of the network outputs ([K, b, ...]) and labels ([b, C]) concatenated
  along the batch axis in device order (identity when `axis_name` is None)."""
  if axis_name is None:
    return out, labels
  gather = lambda x, axis: lax.all_gather(x, axis_name, axis=axis, tiled=True)
  out = jax.tree.map(lambda x: gather(x, 1), out)
  return out, None if labels is None else gather(labels, 0)


DROPOUT_STREAM = 0x5EED


def _constant_zero(value) -> bool:
  return isinstance(value, int | float) and value == 0


def make_dropouts(values: dict, rng: jax.Array, axis_name: str | None):
  """(input dropout, hidden dropout) of the step's hyperparameters, None where the rate is 0
  for every member (no dropout in the program)."""
  return tuple(
    None
    if _constant_zero(values[key])
    else models.dropout(jax.random.fold_in(rng, i), values[key], axis_name)
    for i, key in enumerate(("model.dropout_input", "model.dropout_hidden"))
  )


class Objectives(NamedTuple):
  """The pure loss functions a train step differentiates (exposed for tests and extensions).

  `batch` is the local batch {"inputs": {modality: [b, d]}, "label": [b, C] (labelled data)};
  `generator` and `reversal` gather the outputs and labels before the loss terms (see the module
  docstring), so their values are those of the global batch.
  """

  forward: Callable  # (gen_params, batch) -> network outputs of the local batch
  adversarial: Callable  # (disc_params, emb [K, B, d]) -> L_adv, D's modality loss
  generator: Callable  # (gen, disc, batch, rng, lam, values) -> (L_emb -/+ lam L_adv, aux)
  reversal: Callable  # ({gen, disc}, batch, rng, lam, values) -> (L_emb + L_adv(GRL(z)), aux)


def make_objectives(
  plan: RunPlan, net: CrossModalNet, disc: ModalityDiscriminator, axis_name: str | None = None
) -> Objectives:
  """The objectives of `plan`; `axis_name`: the data-parallel mesh axis (None: no mesh).
  `values` arguments are one member's hyperparameters, `plan.hparams.inside(state.hparams)`."""
  adversarial = plan.adversarial

  def forward(gen_params, batch, dropouts=(None, None)):
    input_drop, hidden_drop = dropouts
    return net.apply(
      {"params": gen_params},
      batch["inputs"],
      input_dropout=input_drop,
      hidden_dropout=hidden_drop,
    )

  def adv_loss(disc_params, emb):
    return losses.modality_adversarial_loss(disc.apply({"params": disc_params}, emb))

  def gathered_loss(gen_params, batch, rng, values):
    # Dropout's masks come from a stream of their own: the loss terms' keys stay as they were.
    dropouts = make_dropouts(values, jax.random.fold_in(rng, DROPOUT_STREAM), axis_name)
    out = forward(gen_params, batch, dropouts)
    out, labels = all_gather_batch(out, batch.get("label"), axis_name)
    if labels is None:
      # Instance-level retrieval: every pair is its own class.
      labels = jnp.eye(out["emb"].shape[1], dtype=jnp.float32)
    l_emb, parts = embedding_loss(
      plan.terms, values, out, {"label": labels}, params=gen_params, rng=rng
    )
    return out, l_emb, parts

  confusion = plan.adversary.generator_loss == "confusion"

  def generator_objective(gen_params, disc_params, batch, rng, lam, values):
    out, l_emb, parts = gathered_loss(gen_params, batch, rng, values)
    if not adversarial:
      return l_emb, (l_emb, jnp.zeros(()), parts)
    if confusion:
      logits = disc.apply({"params": disc_params}, out["emb"])
      l_conf = losses.modality_confusion_loss(logits)
      return l_emb + lam * l_conf, (l_emb, l_conf, parts)
    l_adv = adv_loss(disc_params, out["emb"])
    return l_emb - lam * l_adv, (l_emb, l_adv, parts)

  def reversal_objective(params, batch, rng, lam, values):
    out, l_emb, parts = gathered_loss(params["gen"], batch, rng, values)
    l_adv = adv_loss(params["disc"], losses.gradient_reversal(out["emb"], lam))
    return l_emb + l_adv, (l_emb, l_adv, parts)

  return Objectives(forward, adv_loss, generator_objective, reversal_objective)


def make_step(
  plan: RunPlan,
  net: CrossModalNet,
  disc: ModalityDiscriminator,
  txs: dict[str, optax.GradientTransformation],
  axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns `step_fn(state, batch) -> (state, metrics)` of ONE member (pure; vmap it over a
  population, jit it or loop it).

  With `axis_name`, `step_fn` must run inside `jax.shard_map(..., check_vma=False)` over that
  mesh axis with the state replicated and `batch` this device's shard of the global batch; the
  metrics (global-batch losses) and the new state are then identical on every device.
  """
  adversarial = plan.adversarial
  reversal = adversarial and plan.adversary.mode == "reversal"
  d_steps = plan.adversary.d_steps
  obj = make_objectives(plan, net, disc, axis_name)
  # See the module docstring for why a mean (not a sum) is the single-device gradient.
  pmean = (lambda tree: tree) if axis_name is None else (lambda tree: lax.pmean(tree, axis_name))

  def apply(name, params, opt_state, grads, lr, decay=0.0):
    updates, opt_state = txs[name].update(grads, opt_state, params)
    if not _constant_zero(decay):
      # AdamW: the decay is added to Adam's update, so it is scaled by lr but not by Adam.
      decayed = optax.add_decayed_weights(decay, mask=losses.kernel_mask(params))
      updates, _ = decayed.update(updates, decayed.init(params), params)
    return jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    values = plan.hparams.inside(state.hparams)
    lr = values["optim.lr"]
    disc_lr = jnp.where(values["optim.disc_lr"] > 0, values["optim.disc_lr"], lr)
    lrs = {"gen": lr, "disc": disc_lr}
    decays = {"gen": values["optim.weight_decay"], "disc": 0.0}
    # The state is replicated, so every device draws the same key, and sampled terms (ACMR's
    # random negatives over the gathered batch) pick the same negatives as one device would.
    rng = jax.random.fold_in(state.rng, state.step)
    lam = adversarial_lambda(plan, values, state.step)
    params, opt_state = dict(state.params), dict(state.opt_state)

    if reversal:
      grads, (l_emb, l_adv, parts) = jax.grad(obj.reversal, has_aux=True)(
        params, batch, rng, lam, values
      )
      grads = pmean(grads)
      for name in ("gen", "disc"):
        params[name], opt_state[name] = apply(
          name, params[name], opt_state[name], grads[name], lrs[name], decays[name]
        )
      d_loss, finite_inputs = l_adv, grads
      g_norm = optax.tree_utils.tree_norm(grads["gen"])
      d_norm = optax.tree_utils.tree_norm(grads["disc"])
    else:
      g_grads, (l_emb, l_adv, parts) = jax.grad(obj.generator, has_aux=True)(
        params["gen"], params["disc"], batch, rng, lam, values
      )
      g_grads = pmean(g_grads)
      params["gen"], opt_state["gen"] = apply(
        "gen", params["gen"], opt_state["gen"], g_grads, lr, decays["gen"]
      )
      d_loss, finite_inputs = jnp.zeros(()), g_grads
      g_norm, d_norm = optax.tree_utils.tree_norm(g_grads), jnp.zeros(())
      if adversarial:
        emb = obj.forward(params["gen"], batch)["emb"]
        emb = all_gather_batch({"emb": emb}, None, axis_name)[0]["emb"]
        emb = lax.stop_gradient(emb)
        for _ in range(d_steps):
          d_loss, d_grads = jax.value_and_grad(obj.adversarial)(params["disc"], emb)
          d_grads = pmean(d_grads)
          params["disc"], opt_state["disc"] = apply(
            "disc", params["disc"], opt_state["disc"], d_grads, disc_lr
          )
        finite_inputs = (g_grads, d_grads)
        d_norm = optax.tree_utils.tree_norm(d_grads)

    ok = jnp.isfinite(l_emb) & jnp.isfinite(l_adv) & jnp.isfinite(d_loss)
    ok = ok & _all_finite(finite_inputs)
    if axis_name is not None:
      # Already equal everywhere by construction; pmin makes a replica split impossible.
      ok = lax.pmin(ok.astype(jnp.int32), axis_name) > 0
    take = ok & state.active
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(take, n, o), new, old)
    skipped = state.active & ~ok
    new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_run=jnp.where(
        skipped, state.nonfinite_run + 1, jnp.where(take, 0, state.nonfinite_run)
      ),
      skipped=state.skipped + skipped.astype(jnp.int32),
    )
    if state.ema is not None:
      average = optax.incremental_update(params["gen"], state.ema, 1.0 - values["train.ema_decay"])
      new_state = new_state.replace(ema=keep(average, state.ema))
    metrics = {
      "loss_emb": l_emb,
      "loss_adv": l_adv,
      "loss_disc": d_loss,
      "lambda": lam,
      "grad_norm_gen": g_norm,
      "grad_norm_disc": d_norm,
    }
    metrics.update({f"loss_{k}": v for k, v in parts.items()})
    return new_state, metrics

  return step_fn

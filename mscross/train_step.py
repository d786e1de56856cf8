"""The train state and the one jitted training step shared by every method.

The adversarial game (docs/methods.md): the discriminator D minimises the modality-classification
loss L_adv on the common embeddings; the generator (encoders, common net, classifier) minimises its
embedding loss L_emb MINUS lam * L_adv. Two equivalent implementations, chosen by
`config.adv.mode`:

* "alternating": a generator step on `params["gen"]` with D frozen, then `config.adv.d_steps`
  discriminator steps on `params["disc"]` with the (updated) generator frozen;
* "reversal": one step on both subtrees through a gradient-reversal layer, which hands the
  encoders -lam times the gradient D receives.

lam follows the DANN schedule 2 / (1 + exp(-10 p)) - 1 of training progress p (or stays
constant), times `config.adv.weight`. A step whose loss or gradients are not finite is skipped:
the state keeps its old params and optimiser state and counts the skip.

Data parallelism (`axis_name`, run under `jax.shard_map` by `mscross.parallel`): the SAME step
function with collectives switched on. The state is replicated; each device runs the networks on
its own shard of the global batch; the network outputs and the batch are all-gathered (tiled), so
every loss term, all-pairs negative mining included, sees the global B x B batch exactly as one
device would; the loss is then computed redundantly, identically, on every device.

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

from mscross import input_pipeline, losses, methods
from mscross.errors import ConfigError
from mscross.models import CrossModalNet, ModalityDiscriminator


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of steps taken (skipped ones included)
  params: dict  # {"gen": generator params, "disc": discriminator params}
  opt_state: dict  # {"gen": ..., "disc": ...}, one optimiser per subtree
  rng: jax.Array  # base PRNG key (uint32[2]); step keys are fold_in(rng, step)
  nonfinite_run: jax.Array  # int32: consecutive skipped (non-finite) steps
  skipped: jax.Array  # int32: all skipped steps


def make_optimizers(config) -> dict[str, optax.GradientTransformation]:
  """Adam for the generator and for the discriminator, each over its own subtree."""
  o = config.optim
  gen = optax.adam(o.lr, b1=o.b1, b2=o.b2)
  disc = optax.adam(o.disc_lr or o.lr, b1=o.b1, b2=o.b2)
  if o.grad_clip:
    gen = optax.chain(optax.clip_by_global_norm(o.grad_clip), gen)
    disc = optax.chain(optax.clip_by_global_norm(o.grad_clip), disc)
  return {"gen": gen, "disc": disc}


def init_state(
  config,
  net: CrossModalNet,
  disc: ModalityDiscriminator,
  d_img: int,
  d_txt: int,
  txs: dict[str, optax.GradientTransformation],
) -> TrainState:
  """The initial state of `config.seed`, on the default device."""

  def build():
    root = jax.random.PRNGKey(config.seed)
    k_gen, k_disc = jax.random.split(jax.random.fold_in(root, 0))
    x_img, x_txt = jnp.zeros((2, d_img)), jnp.zeros((2, d_txt))
    gen = net.init(k_gen, x_img, x_txt)["params"]
    width = net.apply({"params": gen}, x_img, x_txt)["img"].shape[-1]
    dparams = disc.init(k_disc, jnp.zeros((2, width)))["params"]
    params = {"gen": gen, "disc": dparams}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state={k: txs[k].init(params[k]) for k in ("gen", "disc")},
      rng=jax.random.fold_in(root, 1),
      nonfinite_run=jnp.zeros((), jnp.int32),
      skipped=jnp.zeros((), jnp.int32),
    )

  # One compiled program: op by op, every initialiser op is compiled on its own (3x slower here).
  return jax.jit(build)()


def adversarial_lambda(config, step: jax.Array, total_steps: int) -> jax.Array:
  adv = config.adv
  if not adv.enabled:
    return jnp.zeros((), jnp.float32)
  if adv.schedule == "dann":
    progress = step.astype(jnp.float32) / max(total_steps, 1)
    return adv.weight * losses.dann_lambda(progress)
  if adv.schedule == "constant":
    return jnp.full((), adv.weight, jnp.float32)
  raise ConfigError(f"adv.schedule must be 'dann' or 'constant', got {adv.schedule!r}")


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_gather_batch(tree, axis_name: str | None):
  """Concatenates every device's shard along the batch axis, so each device holds the global
  batch in device order (identity when `axis_name` is None: one device already holds it)."""
  if axis_name is None:
    return tree
  return jax.tree.map(lambda x: lax.all_gather(x, axis_name, tiled=True), tree)


class Objectives(NamedTuple):
  """The pure loss functions a train step differentiates (exposed for tests and extensions).

  `batch` is the local batch (this device's shard under data parallelism); `generator` and
  `reversal` gather the network outputs and the batch before the loss terms (see the module
  docstring), so their values are those of the global batch.
  """

  forward: Callable  # (gen_params, batch) -> network outputs of the local batch
  adversarial: Callable  # (disc_params, z_img, z_txt) -> L_adv, D's modality loss
  generator: Callable  # (gen, disc, batch, rng, lam) -> (L_emb - lam L_adv, (L_emb, L_adv, parts))
  reversal: Callable  # ({gen, disc}, batch, rng, lam) -> (L_emb + L_adv(GRL_lam(z)), aux)


def make_objectives(
  config, net: CrossModalNet, disc: ModalityDiscriminator, axis_name: str | None = None
) -> Objectives:
  """The objectives of `config`; `axis_name`: the data-parallel mesh axis (None: one device)."""
  terms = methods.active_terms(config.loss)
  adversarial = bool(config.adv.enabled)
  gather = lambda tree: all_gather_batch(tree, axis_name)

  def forward(gen_params, batch):
    return net.apply({"params": gen_params}, batch["image"], batch["text"])

  def adv_loss(disc_params, z_img, z_txt):
    logit = lambda z: disc.apply({"params": disc_params}, z)
    return losses.modality_adversarial_loss(logit(z_img), logit(z_txt))

  def generator_objective(gen_params, disc_params, batch, rng, lam):
    out, batch = gather(forward(gen_params, batch)), gather(batch)
    l_emb, parts = methods.embedding_loss(terms, out, batch, params=gen_params, rng=rng)
    l_adv = adv_loss(disc_params, out["img"], out["txt"]) if adversarial else jnp.zeros(())
    return l_emb - lam * l_adv, (l_emb, l_adv, parts)

  def reversal_objective(params, batch, rng, lam):
    out, batch = gather(forward(params["gen"], batch)), gather(batch)
    l_emb, parts = methods.embedding_loss(terms, out, batch, params=params["gen"], rng=rng)
    z_img = losses.gradient_reversal(out["img"], lam)
    z_txt = losses.gradient_reversal(out["txt"], lam)
    l_adv = adv_loss(params["disc"], z_img, z_txt)
    return l_emb + l_adv, (l_emb, l_adv, parts)

  return Objectives(forward, adv_loss, generator_objective, reversal_objective)


def make_train_step(
  config,
  net: CrossModalNet,
  disc: ModalityDiscriminator,
  txs: dict[str, optax.GradientTransformation],
  total_steps: int,
  axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns `step_fn(state, batch) -> (state, metrics)` (pure; jit it or scan it).

  With `axis_name`, `step_fn` must run inside `jax.shard_map(..., check_vma=False)` over that
  mesh axis with the state replicated and `batch` this device's shard of the global batch; the
  metrics (global-batch losses) and the new state are then identical on every device.
  """
  adversarial = bool(config.adv.enabled)
  mode, d_steps = config.adv.mode, int(config.adv.d_steps)
  if mode not in ("alternating", "reversal"):
    raise ConfigError(f"adv.mode must be 'alternating' or 'reversal', got {mode!r}")
  if d_steps < 1:
    raise ConfigError(f"adv.d_steps must be >= 1, got {d_steps}")
  obj = make_objectives(config, net, disc, axis_name)
  forward, adv_loss = obj.forward, obj.adversarial
  generator_objective, reversal_objective = obj.generator, obj.reversal
  # See the module docstring for why a mean (not a sum) is the single-device gradient.
  pmean = (lambda tree: tree) if axis_name is None else (lambda tree: lax.pmean(tree, axis_name))

  def apply(name, params, opt_state, grads):
    updates, opt_state = txs[name].update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # The state is replicated, so every device draws the same key, and sampled terms (ACMR's
    # random negatives over the gathered batch) pick the same negatives as one device would.
    rng = jax.random.fold_in(state.rng, state.step)
    lam = adversarial_lambda(config, state.step, total_steps)
    params, opt_state = dict(state.params), dict(state.opt_state)

    if adversarial and mode == "reversal":
      grads, (l_emb, l_adv, parts) = jax.grad(reversal_objective, has_aux=True)(
        params, batch, rng, lam
      )
      grads = pmean(grads)
      for name in ("gen", "disc"):
        params[name], opt_state[name] = apply(name, params[name], opt_state[name], grads[name])
      d_loss, finite_inputs = l_adv, grads
      g_norm, d_norm = (
        optax.tree_utils.tree_norm(grads["gen"]),
        optax.tree_utils.tree_norm(grads["disc"]),
      )
    else:
      g_grads, (l_emb, l_adv, parts) = jax.grad(generator_objective, has_aux=True)(
        params["gen"], params["disc"], batch, rng, lam
      )
      g_grads = pmean(g_grads)
      params["gen"], opt_state["gen"] = apply("gen", params["gen"], opt_state["gen"], g_grads)
      d_loss, finite_inputs = jnp.zeros(()), g_grads
      g_norm, d_norm = optax.tree_utils.tree_norm(g_grads), jnp.zeros(())
      if adversarial:
        out = forward(params["gen"], batch)
        z = jax.lax.stop_gradient(all_gather_batch((out["img"], out["txt"]), axis_name))
        for _ in range(d_steps):
          d_loss, d_grads = jax.value_and_grad(adv_loss)(params["disc"], *z)
          d_grads = pmean(d_grads)
          params["disc"], opt_state["disc"] = apply(
            "disc", params["disc"], opt_state["disc"], d_grads
          )
        finite_inputs = (g_grads, d_grads)
        d_norm = optax.tree_utils.tree_norm(d_grads)

    ok = jnp.isfinite(l_emb) & jnp.isfinite(l_adv) & jnp.isfinite(d_loss)
    ok = ok & _all_finite(finite_inputs)
    if axis_name is not None:
      # Already equal everywhere by construction; pmin makes a replica split impossible.
      ok = lax.pmin(ok.astype(jnp.int32), axis_name) > 0
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_run=jnp.where(ok, 0, state.nonfinite_run + 1),
      skipped=state.skipped + (1 - ok.astype(jnp.int32)),
    )
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


def make_chunk_loop(one: Callable) -> Callable:
  """`chunk(state, data, num_steps) -> (state, mean metrics)` from `one(state, data, i) ->
  (state, metrics)`, the i-th step of the chunk: `num_steps` steps in one device loop (a traced
  trip count, so one compilation serves every chunk length). Not jitted: the single-device and
  data-parallel chunks wrap it differently."""

  def chunk(state, data, num_steps):
    _, metrics0 = jax.eval_shape(one, state, data, jnp.zeros((), jnp.int32))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metrics0)

    def body(i, carry):
      st, acc = carry
      st, m = one(st, data, i)
      # A skipped step's losses are NaN/inf by definition; keep them out of the averages.
      return st, jax.tree.map(lambda a, v: a + jnp.where(jnp.isfinite(v), v, 0.0), acc, m)

    state, sums = jax.lax.fori_loop(0, num_steps, body, (state, zeros))
    n = jnp.maximum(num_steps, 1).astype(jnp.float32)
    return state, jax.tree.map(lambda s: s / n, sums)

  return chunk


def make_train_chunk(step_fn, data_key: jax.Array, num_examples: int, batch_size: int):
  """Returns `chunk(state, arrays, num_steps) -> (state, mean metrics)`, jitted with the state
  donated: `num_steps` steps in one device loop, batches gathered on the device (see
  `input_pipeline`). The single-device path; `mscross.parallel` builds the data-parallel one."""
  input_pipeline.steps_per_epoch(num_examples, batch_size)  # validates sizes

  def one(state, arrays, i):
    del i  # the batch follows from the state's own step
    idx = input_pipeline.batch_indices(data_key, state.step, num_examples, batch_size)
    return step_fn(state, input_pipeline.gather_batch(arrays, idx))

  return jax.jit(make_chunk_loop(one), donate_argnums=0)

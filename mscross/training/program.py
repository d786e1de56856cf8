"""The training program of a run plan: `build(plan, num_examples)` is the one public way to get
what training needs (the networks, the optimisers, the initial state, the donated device loop,
the names of its metrics and the embedding function). The trainer, the hyperparameter search,
the benchmarks and the tests all build their programs here, so what they run is what train.py
runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mscross.methods import models
from mscross.runs import embedding
from mscross.training import evaluation, loop, step
from mscross.training.plan import RunPlan


@dataclasses.dataclass(frozen=True)
class Program:
  plan: RunPlan
  net: models.CrossModalNet
  disc: models.ModalityDiscriminator
  txs: dict[str, optax.GradientTransformation]
  mesh: Mesh
  step: Callable  # one member's step over the mesh axis (`step.make_step`)
  loop: loop.TrainLoop  # (state, data, num_steps) -> (state, mean metrics), the state donated
  embed: Callable  # (gen params [P, ...], inputs, mu [P]) -> ranked embeddings [P, K, N, e]
  # (gen params [P, ...], disc params [P, ...], inputs) -> [P] modality-correct counts
  disc_accuracy: Callable

  @property
  def metric_names(self) -> tuple[str, ...]:
    """The step's metrics, as the loop averages them over a chunk (losses, lambda, norms)."""
    return self.loop.metric_names

  def init_state(self) -> step.TrainState:
    """The population's initial state: every member's seed and traced hyperparameters."""
    p = self.plan
    return step.init_population(
      self.net, self.disc, p.spec, self.txs, p.seeds, p.hparams.initial(), ema=p.ema
    )

  @property
  def mix(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    """float32 [P] twice: each member's `mu` (the common part in joint retrieval) and
    `label_weight` (the predicted labels fused in), as the embedding function takes them."""
    h = self.plan.hparams
    return jnp.asarray(h.of("model.mu")), jnp.asarray(h.of("model.label_weight"))

  def member_step(self) -> Callable:
    """One member's step without a device mesh (`jax.jit` it, lower it, or vmap it)."""
    return step.make_step(self.plan, self.net, self.disc, self.txs)

  def member_shapes(self) -> step.TrainState:
    """One member's state as shapes and dtypes (no computation)."""
    state = jax.eval_shape(self.init_state)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)


def build(plan: RunPlan, num_examples: int, *, cache_dir: str | None = None) -> Program:
  """The program of `plan` (resolved with its data spec) for a training split of `num_examples`
  pairs, on `plan.feed.num_devices` devices. With `cache_dir` the traced loop is kept there
  (`program_cache`); without, it is traced as usual."""
  if plan.spec is None:
    raise ValueError("build() needs a plan resolved with the data spec: plan.resolve(config, spec)")
  net, disc = models.build_models(plan.architecture, plan.spec)
  txs = step.make_optimizers(plan.optimiser)
  mesh = loop.make_mesh(loop.resolve_num_devices(plan.feed))
  step_fn = step.make_step(plan, net, disc, txs, axis_name=loop.AXIS)
  train_loop = loop.TrainLoop(
    step_fn,
    mesh,
    num_examples,
    plan.feed.batch_size,
    metric_names=plan.metric_names,
    feed=plan.feed.feed,
    host_steps=plan.feed.host_steps,
    program_key=plan.program_key,
    cache_dir=cache_dir,
  )
  embed = embedding.make_population_embed_fn(plan.retrieval, net, fused=plan.label_fused)
  disc_accuracy = evaluation.make_population_disc_accuracy_fn(net, disc)
  return Program(plan, net, disc, txs, mesh, step_fn, train_loop, embed, disc_accuracy)

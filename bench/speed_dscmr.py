"""Section 1 of bench/train_speed.py: the DSCMR-sized model of docs/methods.md against a plain
PyTorch implementation of it, and against this CPU's roofline.

The PyTorch reference (model, loss J1 + alpha J2 + beta J3, Adam) is written here from the paper's
description, eager and without tricks; `loss_agreement` checks that it computes the loss mscross
trains on the same weights and batch, so that the two rates time the same work. The roofline is
the analytic FLOPs of one step against the measured rate of a large jitted matmul.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import speed_workloads as workloads
from speed_timing import CpuMeter, Runner, fmt_rate, summarise, time_runners, timed
from speed_workloads import WIKI_CLASSES, WIKI_D_IMG, WIKI_D_TXT, Problem

from mscross import dotted
from mscross.data import Split
from mscross.training import plan as plan_lib

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:  # the JAX sections still run; the PyTorch reference is skipped
  torch = None


if torch is not None:

  class TorchDSCMR(nn.Module):
    """DSCMR as docs/methods.md describes it: one ReLU layer per modality, a shared linear layer,
    and a shared linear classifier."""

    def __init__(self, d_img: int, d_txt: int, hidden: int, common: int, num_classes: int):
      super().__init__()
      self.img = nn.Linear(d_img, hidden)
      self.txt = nn.Linear(d_txt, hidden)
      self.shared = nn.Linear(hidden, common)
      self.classifier = nn.Linear(common, num_classes)

    def forward(self, x_img, x_txt):
      f_img = self.shared(F.relu(self.img(x_img)))
      f_txt = self.shared(F.relu(self.txt(x_txt)))
      return f_img, f_txt, self.classifier(f_img), self.classifier(f_txt)


def torch_dscmr_loss(f_img, f_txt, p_img, p_txt, labels, alpha: float, beta: float):
  """J1 + alpha J2 + beta J3 of docs/methods.md."""
  j1 = (p_img - labels).norm(dim=1).mean() + (p_txt - labels).norm(dim=1).mean()
  s = (labels @ labels.T > 0).to(f_img.dtype)

  def pair_term(u, v):
    t = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T / 2
    return (F.softplus(t) - s * t).mean()

  j2 = pair_term(f_img, f_img) + pair_term(f_img, f_txt) + pair_term(f_txt, f_txt)
  j3 = (f_img - f_txt).norm(dim=1).mean()
  return j1 + alpha * j2 + beta * j3


def _torch_model(config, d_img: int, d_txt: int, num_classes: int):
  m = config.model
  return TorchDSCMR(d_img, d_txt, int(m.encoder_width), int(m.shared_layers[0]), num_classes)


def _loss_weights(config) -> tuple[float, float]:
  values = plan_lib.resolve(config).values
  return values["loss.dscmr_pairwise.weight"][0], values["loss.dscmr_invariance.weight"][0]


def _torch_optimizer(config, model):
  o = config.optim
  return torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.b1, o.b2))


def torch_step(config, problem: Problem, seed: int = 0, threads: int | None = None) -> Runner:
  """The eager PyTorch reference on one fixed batch (its input pipeline is not timed).

  `threads` pins torch's intra-op thread count while this runner runs (None: torch's default).
  """
  torch.manual_seed(seed)
  model = _torch_model(config, problem.image.shape[1], problem.text.shape[1], problem.num_classes)
  opt = _torch_optimizer(config, model)
  alpha, beta = _loss_weights(config)
  b = int(config.train.batch_size)
  x_img, x_txt, y = (torch.from_numpy(a[:b]) for a in (problem.image, problem.text, problem.label))

  def steps(n: int) -> None:
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      loss = torch_dscmr_loss(*model(x_img, x_txt), y, alpha, beta)
      loss.backward()
      opt.step()

  def run(n: int) -> None:
    if threads is None:
      return steps(n)
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
      steps(n)
    finally:
      torch.set_num_threads(default)

  info = {"params": sum(p.numel() for p in model.parameters()), "threads": threads}
  name = "PyTorch eager" + ("" if threads is None else f", {threads} thread(s)")
  return Runner(name, run, {}, info)


def loss_agreement(config, problem: Problem) -> dict[str, float]:
  """Both implementations' loss on the same weights and batch: they must time the same thing."""
  prog = workloads.build_program(config, problem, 1)
  member = jax.tree.map(lambda x: x[0], prog.init_state())
  batch_np = problem.first_batch(int(config.train.batch_size))
  # The loss the step logs is the one it differentiates, at the weights before the update.
  _, metrics = jax.jit(prog.member_step())(member, batch_np)
  l_emb = float(metrics["loss_emb"])
  gen = member.params["gen"]
  model = _torch_model(config, problem.image.shape[1], problem.text.shape[1], problem.num_classes)
  # Flax keeps Dense kernels as [in, out], torch Linear weights as [out, in].
  layers = {
    "img": gen["encoder_image"]["dense_0"],
    "txt": gen["encoder_text"]["dense_0"],
    "shared": gen["common"]["dense_0"],
    "classifier": gen["classifier"],
  }
  with torch.no_grad():
    for name, p in layers.items():
      getattr(model, name).weight.copy_(torch.from_numpy(np.array(p["kernel"]).T.copy()))
      getattr(model, name).bias.copy_(torch.from_numpy(np.array(p["bias"])))
    inputs = batch_np["inputs"]
    out = model(torch.from_numpy(inputs["image"]), torch.from_numpy(inputs["text"]))
    label = torch.from_numpy(batch_np["label"])
    l_torch = torch_dscmr_loss(*out, label, *_loss_weights(config)).item()
  return {"mscross": l_emb, "torch": l_torch, "abs_diff": abs(l_emb - l_torch)}


def jax_matmul(size: int) -> Runner:
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(size, size)).astype(np.float32)) for _ in range(2))
  mm = jax.jit(jnp.matmul)
  _, compile_s = timed(lambda: jax.block_until_ready(mm(a, b)))

  def run(n: int) -> None:
    jax.block_until_ready([mm(a, b) for _ in range(n)])

  return Runner(f"jax jit matmul {size}^3 float32", run, compile_s)


def torch_matmul(size: int) -> Runner:
  g = torch.Generator().manual_seed(0)
  a, b = (torch.randn(size, size, generator=g) for _ in range(2))

  def run(n: int) -> None:
    for _ in range(n):
      torch.matmul(a, b)

  return Runner(f"torch matmul {size}^3 float32", run)


def torch_reference_runs(config, train: Split, steps: int, seeds: list[int]) -> dict:
  """The PyTorch DSCMR trained `steps` steps per seed, one run after the other, in this process
  (torch already imported): model construction, shuffled batches drawn from `train`, forward,
  backward, Adam. Default threads."""
  modalities = list(train.features)
  x_img = torch.from_numpy(np.ascontiguousarray(train.features[modalities[0]]))
  x_txt = torch.from_numpy(np.ascontiguousarray(train.features[modalities[1]]))
  y = torch.from_numpy(np.ascontiguousarray(train.label))
  n, b = len(train), int(config.train.batch_size)
  per_epoch = n // b
  alpha, beta = _loss_weights(config)
  walls = []
  with CpuMeter() as meter:
    for seed in seeds:
      t0 = time.perf_counter()
      torch.manual_seed(seed)
      rng = np.random.default_rng(seed)
      model = _torch_model(config, x_img.shape[1], x_txt.shape[1], y.shape[1])
      opt = _torch_optimizer(config, model)
      for step in range(steps):
        if step % per_epoch == 0:
          perm = torch.from_numpy(rng.permutation(n))
        idx = perm[(step % per_epoch) * b : (step % per_epoch + 1) * b]
        opt.zero_grad(set_to_none=True)
        loss = torch_dscmr_loss(*model(x_img[idx], x_txt[idx]), y[idx], alpha, beta)
        loss.backward()
        opt.step()
      walls.append(time.perf_counter() - t0)
  return {"seeds": list(seeds), "steps": steps, "walls_s": walls, "cpu": meter.result}


def dscmr_step_flops(batch: int, d_img: int, d_txt: int, hidden: int, common: int, classes: int):
  """Matmul FLOPs of one DSCMR training step, by part.

  A matmul [B, i] x [i, o] costs 2 B i o. Its backward pass costs twice that (the gradient of the
  weights and of the input), except for the first layer of each modality, whose input needs no
  gradient. The three B x B cosine matrices of J2 are counted too; elementwise work (ReLU, norms,
  Adam) is not.
  """
  b = batch
  parts = [
    # name, formula, forward FLOPs, backward FLOPs
    (f"image Linear {d_img}->{hidden}", f"2*{b}*{d_img}*{hidden}", 2 * b * d_img * hidden, 1),
    (f"text Linear {d_txt}->{hidden}", f"2*{b}*{d_txt}*{hidden}", 2 * b * d_txt * hidden, 1),
    (
      f"shared Linear {hidden}->{common}, both modalities",
      f"2 x 2*{b}*{hidden}*{common}",
      2 * 2 * b * hidden * common,
      2,
    ),
    (
      f"classifier {common}->{classes}, both modalities",
      f"2 x 2*{b}*{common}*{classes}",
      2 * 2 * b * common * classes,
      2,
    ),
    (
      "J2 cosine matrices (img-img, img-txt, txt-txt)",
      f"3 x 2*{b}*{b}*{common}",
      3 * 2 * b * b * common,
      2,
    ),
  ]
  rows = [
    {"part": name, "formula": formula, "forward": fwd, "backward": mult * fwd}
    for name, formula, fwd, mult in parts
  ]
  forward = sum(r["forward"] for r in rows)
  backward = sum(r["backward"] for r in rows)
  return {"rows": rows, "forward": forward, "backward": backward, "total": forward + backward}


def check_dscmr_preset(config) -> list[str]:
  """Where `presets.build("dscmr", ...)` departs from docs/methods.md's DSCMR (empty if nowhere)."""
  expected = {
    "model.encoder_layers": (),
    "model.encoder_width": 2048,
    "model.shared_layers": (1024,),
    "model.activation": "relu",
    "model.activate_final": True,
    "model.shared_activate_final": False,
    "model.classifier_input": "common",
    "model.dtype": "float32",
    "train.batch_size": 100,
    "adv.enabled": False,
    "optim.lr": 1e-4,
    "optim.b1": 0.5,
    "optim.b2": 0.999,
    "optim.grad_clip": 0.0,
    "loss.dscmr_label.weight": 1.0,
    "loss.dscmr_pairwise.weight": 1e-3,
    "loss.dscmr_invariance.weight": 1e-1,
  }
  problems = []
  for key, want in expected.items():
    got = dotted.get(config, key)
    if isinstance(want, tuple):
      got = tuple(got)
    if got != want:
      problems.append(f"{key} = {got!r}, docs/methods.md: {want!r}")
  if len(config.model.encoders):
    problems.append(f"model.encoders = {config.model.encoders.to_dict()!r}, docs/methods.md: {{}}")
  active = {t.name for t in plan_lib.resolve(config).terms}
  if active != {"dscmr_label", "dscmr_pairwise", "dscmr_invariance"}:
    problems.append(f"active loss terms {sorted(active)}")
  return problems


def section_dscmr(args, problem: Problem, out: dict) -> tuple[list[str], Runner]:
  """Section 1; also returns the loop runner, which section 2 reuses for its dscmr P=1 row."""
  config = workloads.preset("dscmr")
  problems = check_dscmr_preset(config)
  if problems:
    raise SystemExit("the dscmr preset is not docs/methods.md's DSCMR: " + "; ".join(problems))
  b = int(config.train.batch_size)
  m = config.model
  hidden, common = int(m.encoder_width), int(m.shared_layers[0])
  flops = dscmr_step_flops(b, WIKI_D_IMG, WIKI_D_TXT, hidden, common, WIKI_CLASSES)
  agreement = loss_agreement(config, problem) if torch is not None else None

  runners = {"mscross_loop": workloads.mscross_loop(config, problem, 1)}
  if torch is not None:
    runners["torch"] = torch_step(config, problem)
    # Not the reference: shows how much of the gap is torch's OpenMP pool on busy cores.
    runners["torch_1thread"] = torch_step(config, problem, threads=1)
  runners["matmul_jax"] = jax_matmul(args.matmul_size)
  if torch is not None:
    runners["matmul_torch"] = torch_matmul(args.matmul_size)
  loop = runners["mscross_loop"]
  prog = loop.info["program"]
  xla_flops = workloads.step_cost_analysis(prog, problem)
  units, seconds, meter = time_runners(
    list(runners.values()), args.seconds, workloads.MAX_STEPS_PER_REPEAT, args.repeats
  )
  mm_gflop = 2 * args.matmul_size**3 / 1e9
  stats = {
    key: summarise(n, secs, mm_gflop if key.startswith("matmul") else 1.0)
    for key, n, secs in zip(runners, units, seconds, strict=True)
  }
  roofline = stats["matmul_jax"]["median"] * 1e9 / flops["total"]
  # The same bound per CPU second of this process: less sensitive to how much of the machine
  # the other work left us during each repeat.
  roofline_cpu = stats["matmul_jax"]["per_cpu_s"] * 1e9 / flops["total"]
  ratio = {}
  if torch is not None:
    for ref in ("torch", "torch_1thread"):
      ratio[f"loop/{ref}"] = stats["mscross_loop"]["median"] / stats[ref]["median"]
      ratio[f"loop/{ref} per CPU-s"] = stats["mscross_loop"]["per_cpu_s"] / stats[ref]["per_cpu_s"]
  out["dscmr"] = {
    "preset_check": "ok",
    "batch_size": b,
    "params": {
      "mscross_gen": workloads.num_params(prog.member_shapes().params["gen"]),
      "mscross_gen_and_disc": loop.info["params_per_member"],
      "torch": runners["torch"].info["params"] if torch is not None else None,
    },
    "loss_agreement": agreement,
    "flops": flops,
    "xla_flops_per_step": xla_flops,
    "compile_s": {"train_loop": loop.compile_s, "matmul": runners["matmul_jax"].compile_s},
    "steady_state": stats,
    "matmul_size": args.matmul_size,
    "roofline_steps_per_s": roofline,
    "roofline_steps_per_cpu_s": roofline_cpu,
    "ratio_mscross_over_torch": ratio,
    "cpu": meter.result,
  }

  lines = [
    f"## 1. DSCMR-sized model, batch {b}, random data of the Wikipedia shapes",
    "",
    f"- model: image {WIKI_D_IMG} -> {hidden} ReLU, text {WIKI_D_TXT} -> {hidden} ReLU, shared "
    f"{hidden} -> {common}, classifier {common} -> {WIKI_CLASSES}; loss J1 + 1e-3 J2 + 1e-1 J3; "
    f"Adam 1e-4 (0.5, 0.999); {problem.image.shape[0]} random pairs",
    '- `presets.build("dscmr", "wikipedia")` matches docs/methods.md (layers, activation, batch, '
    "optimiser, loss weights, adversary off)",
    f"- parameters: mscross generator {out['dscmr']['params']['mscross_gen']:,}"
    + (f", PyTorch {out['dscmr']['params']['torch']:,}" if torch is not None else ""),
  ]
  if agreement is not None:
    lines.append(
      f"- same weights, same batch: mscross loss {agreement['mscross']:.6f}, PyTorch loss "
      f"{agreement['torch']:.6f} (|diff| {agreement['abs_diff']:.1e})"
    )
  else:
    lines.append("- PyTorch is not installed: no loss agreement check and no reference rows")
  lines += [
    "",
    "### FLOPs of one training step (analytic)",
    "",
    "| part | forward formula | forward MFLOP | backward MFLOP |",
    "| --- | --- | ---: | ---: |",
  ]
  for r in flops["rows"]:
    lines.append(
      f"| {r['part']} | {r['formula']} | {r['forward'] / 1e6:.1f} | {r['backward'] / 1e6:.1f} |"
    )
  xla = "n/a" if xla_flops is None else f"{xla_flops / 1e9:.3f} GFLOP"
  lines += [
    f"| **total** | | {flops['forward'] / 1e6:.1f} | {flops['backward'] / 1e6:.1f} |",
    "",
    f"Train step = forward + backward = **{flops['total'] / 1e9:.3f} GFLOP** (backward = 2x "
    "forward, except the first layers, which need no input gradient; elementwise work not "
    f"counted). XLA's cost analysis of one member's step (lowered, before optimisation): {xla}.",
    "",
    f"Compiling the TrainLoop program (first call, zero steps): {loop.compile_s['wall']:.2f} s "
    f"wall, {loop.compile_s['cpu']:.2f} s CPU.",
    "",
    f"### Steady state: {args.repeats} interleaved repeats of about {args.seconds:g} s each",
    "",
    f"Roofline = jitted matmul rate / FLOPs per step = {stats['matmul_jax']['median']:.1f} "
    f"GFLOP/s / {flops['total'] / 1e9:.3f} GFLOP = **{roofline:.2f} steps/s**.",
    "",
    "| implementation | steps per repeat | steps/s median | min | max | spread "
    "| steps per CPU-s | fraction of roofline (wall) | (CPU-s) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  labels = {"mscross_loop": "mscross TrainLoop (device feed, P=1), one call per repeat"}
  if torch is not None:
    labels["torch"] = f"PyTorch eager, fixed batch, default threads ({torch.get_num_threads()})"
    labels["torch_1thread"] = "PyTorch eager, fixed batch, 1 thread (check, not the reference)"
  for key, label in labels.items():
    s = stats[key]
    lines.append(
      f"| {label} | {s['units_per_repeat']} | {fmt_rate(s)} | {s['median'] / roofline:.0%} | "
      f"{s['per_cpu_s'] / roofline_cpu:.0%} |"
    )
  lines += [
    "",
    "| matmul rate | matmuls per repeat | GFLOP/s median | min | max | spread | GFLOP per CPU-s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for key in ("matmul_jax", "matmul_torch"):
    if key in stats:
      s = stats[key]
      lines.append(f"| {runners[key].name} | {s['units_per_repeat']} | {fmt_rate(s)} |")
  lines.append("")
  if ratio:
    lines += [
      f"mscross / PyTorch steps/s (medians): **{ratio['loop/torch']:.2f}x** against the "
      f"default-threads reference ({ratio['loop/torch per CPU-s']:.2f}x per CPU-s), "
      f"{ratio['loop/torch_1thread']:.2f}x against PyTorch on 1 thread "
      f"({ratio['loop/torch_1thread per CPU-s']:.2f}x per CPU-s). The roofline caps the ratio "
      f"at {roofline / stats['torch']['median']:.2f}x against the default-threads reference. "
      "The PyTorch rows reuse one batch; the mscross loop gathers a shuffled batch on the "
      "device every step.",
      "",
    ]
  lines += [f"CPU during the repeats: {meter.describe()}.", ""]
  return lines, loop

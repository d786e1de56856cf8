"""Writes fixtures/torch_files/: genuine checkpoints saved by PyTorch, in both of its layouts, and
what `torch.load(weights_only=True)` reads back from them, for tests/extractors/test_torch_pickle.py
to compare `mscross.extractors.torch_pickle` against without PyTorch.

Run it from the repository root with an interpreter that has torch (pinned: see pyproject's
`bench` extra) and numpy:

  python tests/extractors/reference_torch_files.py

The checkpoint: a nested dict ({"model": <state dict>, "optimizer": {...}, "epoch": 3}) holding
every element type a storage has (float32, float16, bfloat16, float64, the integer types,
bool), a scalar, an empty tensor, a transposed and a stepped view, two tensors sharing one
storage at different offsets, and a tied weight. Stored: `zip.pt` (torch's default),
`legacy.pt` (`_use_new_zipfile_serialization=False`), and `expected.npz`: every flattened key's
values as float64 (exact for every type here), with "__dtypes__" naming each key's numpy dtype
and "__torch__" the torch version that wrote them.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent / "fixtures" / "torch_files"


def checkpoint(torch):
  g = torch.Generator().manual_seed(0)
  weight = torch.randn(6, 4, generator=g)
  shared = torch.arange(20, dtype=torch.float32)
  model = collections.OrderedDict(
    [
      ("embed.weight", weight),
      ("head.weight", weight),  # tied: the same tensor under two keys
      ("fc.weight", torch.randn(3, 5, generator=g).t()),  # a transposed view
      ("fc.bias", torch.randn(10, generator=g)[::2]),  # a stepped view
      ("half", torch.randn(3, 3, generator=g).half()),
      ("bf16", torch.randn(2, 5, generator=g).bfloat16()),
      ("double", torch.randn(4, generator=g).double()),
      ("long", torch.arange(-3, 3, dtype=torch.int64)),
      ("int", torch.tensor([7, -8, 2**31 - 1], dtype=torch.int32)),
      ("short", torch.tensor([-5, 300], dtype=torch.int16)),
      ("char", torch.tensor([-128, 127], dtype=torch.int8)),
      ("byte", torch.tensor([0, 255, 3], dtype=torch.uint8)),
      ("mask", torch.tensor([True, False, True])),
      ("bn.num_batches_tracked", torch.tensor(1234)),  # a scalar
      ("empty", torch.zeros(0, 3)),
      ("first", shared[2:6]),  # two views of one storage, at different offsets
      ("second", shared[10:16].view(2, 3)),
    ]
  )
  optimizer = {"state": {"0": {"step": torch.tensor(5.0), "exp_avg": torch.ones(2, 2)}}}
  return {"model": model, "optimizer": optimizer, "epoch": 3, "note": "reference"}


def flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    elif hasattr(value, "shape"):
      out[f"{prefix}{key}"] = value
  return out


def main() -> None:
  import torch

  FOLDER.mkdir(parents=True, exist_ok=True)
  state = checkpoint(torch)
  torch.save(state, FOLDER / "zip.pt")
  torch.save(state, FOLDER / "legacy.pt", _use_new_zipfile_serialization=False)
  expected, dtypes = {}, {}
  for layout in ("zip", "legacy"):
    loaded = flatten(torch.load(FOLDER / f"{layout}.pt", weights_only=True))
    for key, tensor in loaded.items():
      values = tensor.to(torch.float64).numpy()
      name = str(tensor.dtype).removeprefix("torch.").replace("bool", "bool_")
      if key in expected:
        assert np.array_equal(expected[key], values) and dtypes[key] == name, key
      expected[key], dtypes[key] = values, name
  np.savez(
    FOLDER / "expected.npz",
    __dtypes__=np.asarray(json.dumps(dtypes)),
    __torch__=np.asarray(torch.__version__),
    **expected,
  )
  print(f"wrote {len(expected)} tensors, torch {torch.__version__}, to {FOLDER}")


if __name__ == "__main__":
  main()

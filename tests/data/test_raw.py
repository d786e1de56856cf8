"""Raw-data datasets (`archive`, `manifest`, `web_news`): listing, encoding, caching, and every
kind of bad raw item named with its file, skipped and listed or, on request, stopping."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import write_archive, write_image
from toy_extractors import EXTRACT_CALLS, TINY_EXTRACTORS, TINY_IMAGE_DIM, TINY_TEXT_DIM

from mscross import data
from mscross.errors import ConfigError, DataError
from mscross.extractors import images

TINY = data.Options(extractors=TINY_EXTRACTORS)


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MSCROSS_CACHE_DIR", str(tmp_path / "cache"))


def test_archive_splits_features_and_labels(tmp_path):
  folder = write_archive(tmp_path / "arch")
  splits = {s: data.load_split("archive", s, folder, TINY) for s in data.SPLITS}
  assert [len(splits[s]) for s in data.SPLITS] == [18, 2, 8]
  train = splits["train"]
  assert train.modalities == ("image", "text")
  assert train.features["image"].shape == (18, TINY_IMAGE_DIM)
  assert train.features["text"].shape == (18, TINY_TEXT_DIM)
  assert train.class_names == ("cats", "dogs")
  assert set(splits["test"].ids) == {f"txt{n}/img{n}" for n in range(21, 29)}
  # The text features are the tiny extractor's letter histograms of the file's words.
  row = list(splits["test"].ids).index("txt21/img21")
  words = " ".join((folder / "texts" / "txt21.txt").read_text().split())
  expected = np.bincount([ord(ch) % TINY_TEXT_DIM for ch in words], minlength=TINY_TEXT_DIM)
  np.testing.assert_allclose(splits["test"].features["text"][row], expected / len(words), 1e-6)
  assert data.load_problems("archive", folder, TINY) == []


def test_second_load_reads_the_cache_and_extractors_key_it(tmp_path):
  folder = write_archive(tmp_path / "arch")
  data.load_split("archive", "train", folder, TINY)
  before = dict(EXTRACT_CALLS)
  data.load_split("archive", "test", folder, TINY)
  assert EXTRACT_CALLS == before
  # Another preparation of the same items by the same extractors reuses their encodings.
  stop = data.Options(extractors=TINY_EXTRACTORS, bad_input="stop")
  assert len(data.load_split("archive", "train", folder, stop)) == 18
  assert EXTRACT_CALLS == before
  # A changed file is extracted again (with the rest of its modality), the other modality not.
  (folder / "texts" / "txt3.txt").write_text("a new text")
  data.load_split("archive", "train", folder, TINY)
  assert EXTRACT_CALLS["image"] == before["image"] and EXTRACT_CALLS["text"] == before["text"] + 28
  # Another extractor is another preparation.
  with pytest.raises(ConfigError, match="unknown text extractor 'nope'"):
    data.load_split(
      "archive", "train", folder, data.Options(extractors={**TINY_EXTRACTORS, "text": "nope"})
    )
  with pytest.raises(ConfigError, match="unknown image extractor 'tiny_text'"):
    data.load_split(
      "archive", "train", folder, data.Options(extractors={**TINY_EXTRACTORS, "image": "tiny_text"})
    )


def _break(folder):
  """Every kind of bad raw item, one pair each; returns {pair id: the expected reason}."""
  write_image(folder / "images" / "cats" / "img1.jpg", "RGBA", fmt="PNG")
  write_image(folder / "images" / "cats" / "img2.jpg", "CMYK", fmt="JPEG")
  write_image(folder / "images" / "cats" / "img3.jpg", "L")
  os.remove(folder / "images" / "cats" / "img4.jpg")
  write_image(folder / "images" / "cats" / "img4.png", "I;16")
  os.remove(folder / "images" / "cats" / "img5.jpg")
  full = (folder / "images" / "cats" / "img6.jpg").read_bytes()
  (folder / "images" / "cats" / "img6.jpg").write_bytes(full[: len(full) // 2])
  (folder / "images" / "cats" / "img7.jpg").write_bytes(b"not an image at all")
  write_image(folder / "images" / "dogs" / "img11.jpg", size=(200, 100))
  (folder / "texts" / "txt12.txt").write_text("  \n ")
  (folder / "texts" / "txt13.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
  with open(folder / "trainset_txt_img_cat.list", "a") as f:
    f.write("txt14\timg14\t2\n")
  return {
    "txt5/img5": "no such image file",
    "txt6/img6": "unreadable image",
    "txt7/img7": "not an image file",
    "txt11/img11": "over the limit of 10,000",
    "txt12/img12": "empty text",
    "txt13/img13": "not UTF-8",
    "txt14/img14": "listed again",
  }


def test_bad_items_are_skipped_and_listed_with_their_files(tmp_path, monkeypatch, capsys):
  folder = write_archive(tmp_path / "arch")
  expected = _break(folder)
  monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
  splits = {s: data.load_split("archive", s, folder, TINY) for s in data.SPLITS}
  ids = {i for s in splits.values() for i in s.ids}
  problems = data.load_problems("archive", folder, TINY)
  skipped = {p.id: p for p in problems if p.action == "skipped"}
  assert set(skipped) == set(expected)
  assert not set(expected) - {"txt14/img14"} & ids
  assert "txt14/img14" in ids  # its first listing stays
  for pair_id, reason in expected.items():
    assert reason in skipped[pair_id].reason, skipped[pair_id]
  assert "img5.jpg" in skipped["txt5/img5"].reason
  assert "txt13.txt" in skipped["txt13/img13"].reason
  assert "trainset_txt_img_cat.list:" in skipped["txt14/img14"].reason
  converted = {p.id: p.reason for p in problems if p.action == "converted"}
  assert set(converted) == {"txt1/img1", "txt2/img2", "txt3/img3", "txt4/img4"}
  assert "RGBA composited on white" in converted["txt1/img1"]
  assert "CMYK converted" in converted["txt2/img2"]
  assert "L converted" in converted["txt3/img3"]
  assert "16-bit" in converted["txt4/img4"]
  assert "skipped 7 of 29 pairs" in capsys.readouterr().err


def test_stop_on_bad_input_names_the_file(tmp_path):
  folder = write_archive(tmp_path / "arch")
  os.remove(folder / "images" / "dogs" / "img15.jpg")
  stop = data.Options(extractors=TINY_EXTRACTORS, bad_input="stop")
  with pytest.raises(DataError, match=r"img15\.jpg: no such image file.*data\.bad_input=skip"):
    data.load_split("archive", "train", folder, stop)
  with pytest.raises(ConfigError, match="data.bad_input='maybe'"):
    data.Options(bad_input="maybe")


def test_manifest_csv_with_splits_and_jsonl_without(tmp_path):
  folder = tmp_path / "mine"
  rows = ["image,text,label,split"]
  records = []
  for n in range(30):
    write_image(folder / "photos" / f"{n}.png", seed=n)
    label = ("fox", "harbour")[n % 2]
    split = "test" if n >= 24 else "train"
    rows.append(f"photos/{n}.png,a photo of a {label} number {n},{label},{split}")
    records.append({"image": f"photos/{n}.png", "text": f"a {label}", "label": label})
  (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
  splits = {s: data.load_split("manifest", s, folder, TINY) for s in data.SPLITS}
  assert [len(splits[s]) for s in data.SPLITS] == [21, 3, 6]
  assert splits["train"].class_names == ("fox", "harbour")
  assert splits["test"].ids.tolist() == [str(n) for n in range(25, 31)]

  other = tmp_path / "jsonl"
  shutil.copytree(folder / "photos", other / "photos")
  (other / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  sizes = [len(data.load_split("manifest", s, other, TINY)) for s in data.SPLITS]
  assert sizes == [18, 6, 6]  # the seeded 60/20/20 split


def _grouped_manifest(folder, splits=None):
  rows = ["image,text,label,group" + (",split" if splits else "")]
  for n in range(36):
    write_image(folder / f"{n}.png", seed=n)
    row = f"{n}.png,a photo number {n},{('fox', 'harbour')[n % 2]},event{n // 3}"
    rows.append(row + (f",{splits(n)}" if splits else ""))
  (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
  return folder


def _groups_of(split) -> set[str]:
  return {f"event{(int(i) - 1) // 3}" for i in split.ids}  # ids are row numbers from 1


def test_a_manifest_s_groups_are_never_split_apart(tmp_path):
  drawn = _grouped_manifest(tmp_path / "drawn")
  splits = {s: data.load_split("manifest", s, drawn, TINY) for s in data.SPLITS}
  # 12 groups of 3: each whole in one split, every pair in one.
  assert sum(len(s) for s in splits.values()) == 36
  assert all(len(s) % 3 == 0 and len(s) for s in splits.values())
  groups = [_groups_of(s) for s in splits.values()]
  assert sum(len(g) for g in groups) == len(set().union(*groups)) == 12

  # Given train and test: the validation carved from train keeps groups whole too.
  given = _grouped_manifest(tmp_path / "given", lambda n: "test" if n >= 27 else "train")
  carved = {s: data.load_split("manifest", s, given, TINY) for s in ("train", "validation")}
  assert len(carved["validation"]) % 3 == 0 and len(carved["validation"])
  assert not _groups_of(carved["train"]) & _groups_of(carved["validation"])


def test_given_splits_that_part_a_group_are_one_error_line(tmp_path):
  folder = _grouped_manifest(tmp_path / "parted", lambda n: "test" if n >= 26 else "train")
  with pytest.raises(
    DataError,
    match=r"manifest\.csv:28: group 'event8' is in test here and in train at .*manifest\.csv:26",
  ):
    data.load_split("manifest", "train", folder, TINY)


def test_a_manifest_without_splits_lists_skipped_pairs_without_a_split(tmp_path):
  folder = tmp_path / "mine"
  rows = ["image,text,label"]
  for n in range(30):
    write_image(folder / f"{n}.png", mode="RGBA" if n == 3 else "RGB", seed=n, fmt="PNG")
    rows.append(f"{n}.png,a photo number {n},{('fox', 'harbour')[n % 2]}")
  os.remove(folder / "7.png")
  (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
  splits = {s: data.load_split("manifest", s, folder, TINY) for s in data.SPLITS}
  problems = {p.action: p for p in data.load_problems("manifest", folder, TINY)}
  # Skipped before the split was drawn: no split. Converted and kept: the split it landed in.
  assert problems["skipped"].id == "8" and problems["skipped"].split == "-"
  landed = [s for s, split in splits.items() if "4" in split.ids.tolist()]
  assert problems["converted"].id == "4" and [problems["converted"].split] == landed


def test_texts_an_extractor_mostly_cannot_read_are_named_once(tmp_path, capsys):
  folder = tmp_path / "mine"
  rows = ["image,text,label"]
  for n in range(20):
    write_image(folder / f"{n}.png", seed=n)
    rows.append(f"{n}.png,龙里河大桥的建设者们 {n},{('a', 'b')[n % 2]}")
  (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
  data.load_split("manifest", "train", folder, TINY)
  warned = [p for p in data.load_problems("manifest", folder, TINY) if p.action == "warned"]
  assert len(warned) == 1 and warned[0].modality == "text"
  assert "tokens of the 'text' texts are unknown to tiny_text's vocabulary" in warned[0].reason
  assert "try data.extractors.text=minilm" in warned[0].reason
  err = capsys.readouterr().err
  assert err.count("unknown to tiny_text's vocabulary") == 1
  # English texts: nothing to say.
  assert not data.raw.unknown_tokens_problem(data.raw.extractors.get("minilm"), "text", 1, 100)
  assert data.raw.unknown_tokens_problem(data.raw.extractors.get("minilm"), "text", 61, 100)


@pytest.mark.parametrize(
  ("content", "message"),
  [
    ("image,text,colour\nx.png,hi,red\n", "unknown column 'colour'"),
    ("image,label\nx.png,a\n", "needs an 'image' column and a 'text'"),
    ("image,text,split\nx.png,hi,train\ny.png,yo,\n", r"manifest\.csv:3: no split"),
    ("image,text,split\nx.png,hi,dev\n", "split 'dev'; use one of train, validation, test"),
  ],
)
def test_malformed_manifest_is_one_line_naming_the_file(tmp_path, content, message):
  (tmp_path / "manifest.csv").write_text(content)
  with pytest.raises(DataError, match=message):
    data.load_split("manifest", "train", tmp_path, TINY)


def test_extractors_only_for_raw_modalities(tmp_path):
  # A config error, found before the source is looked for: the folder holds no Wikipedia.
  with pytest.raises(ConfigError, match="data.extractors.image: dataset 'wikipedia' has raw text"):
    data.load_split(
      "wikipedia", "train", tmp_path, data.Options(extractors={"image": "tiny_image"})
    )
  with pytest.raises(ConfigError, match="'digits_halves' has no raw items"):
    data.load_split("digits_halves", "train", None, data.Options(extractors={"a": "tiny_text"}))


@pytest.mark.data(
  "web_news/images",
  "web_news/texts",
  "web_news/categories.list",
  "web_news/trainset_txt_img_cat.list",
  "web_news/testset_txt_img_cat.list",
)
def test_web_news_missing_images_are_skipped_and_listed(tmp_path, data_dir):
  """The 10 listed images that web_news lacks, on a copy of its lists cut to those pairs and a
  few good ones (the real files, linked)."""
  source = data_dir / "web_news"
  folder = tmp_path / "web_news"
  folder.mkdir()
  for name in ("images", "texts", "categories.list"):
    os.symlink(source / name, folder / name)
  missing = {
    "train": ("22", "72", "162", "444", "1106", "1138", "1180"),
    "test": ("1729", "1730", "1784"),
  }
  for split, list_name in (
    ("train", "trainset_txt_img_cat.list"),
    ("test", "testset_txt_img_cat.list"),
  ):
    lines = (source / list_name).read_text().splitlines()
    bad = [line for line in lines if line.split("\t")[1] in missing[split]]
    good = [line for line in lines if line.split("\t")[1] not in missing[split]]
    # Ten good pairs of each class, so that a stratified validation split exists.
    by_class = {}
    for line in good:
      by_class.setdefault(line.split("\t")[2], []).append(line)
    good = [line for group in by_class.values() for line in group[:10]]
    (folder / list_name).write_text("\n".join(bad + good) + "\n")
  problems = data.load_problems("archive", folder, TINY)
  skipped = [p for p in problems if p.action == "skipped"]
  assert sorted(p.id.split("/")[1] for p in skipped) == sorted(missing["train"] + missing["test"])
  assert all(p.reason.endswith(": no such image file") and p.modality == "image" for p in skipped)
  assert len(data.load_split("archive", "test", folder, TINY)) == 100

"""The shared part of the builders of raw image-text pairs (`archive`, `web_news`, `manifest`):
their two raw modalities and default extractors, and which files make their source.

A subclass says where its pairs are listed (`listed`) and how they are split (`read_source`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from mscross.data import base, raw


class ImageTextBuilder(base.PairedBuilder, skip_registration=True):
  """Pairs of one image file and one text (a file or inline), listed in a source folder."""

  SOURCE_SUBDIR = ""
  RAW_MODALITIES: ClassVar[dict[str, str]] = {"image": "image", "text": "text"}
  DEFAULT_EXTRACTORS: ClassVar[dict[str, str]] = {"image": "efficientnet_lite0", "text": "minilm"}

  @classmethod
  def listed(cls, folder: Path) -> tuple[list[Path], list[raw.Pair]]:
    """(the files that list the pairs, the listed pairs) of a source folder."""
    raise NotImplementedError

  @classmethod
  def modalities_for(cls, config_name: str | None) -> tuple[str, ...]:
    del config_name
    return tuple(cls.RAW_MODALITIES)

  @classmethod
  def source_files(cls, source_dir: Path | None, config_name: str | None) -> list[Path]:
    del config_name
    lists, pairs = cls.listed(Path(source_dir))
    # Listed items that exist: one appearing or changing makes a new cache entry.
    items = [p for pair in pairs for p in pair.items.values() if isinstance(p, Path)]
    return lists + [p for p in items if p.is_file()]

  @classmethod
  def raw_items(cls, source_dir: Path | None) -> dict[str, dict[str, Path | str]]:
    return {pair.id: dict(pair.items) for pair in cls.listed(Path(source_dir))[1]}

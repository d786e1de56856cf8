"""The raw items (images, texts) of a report's shown queries and results, beside their ids.

Where a dataset is made from raw items (`mscross.data.raw_items`), `attach` gives every shown
query and result of a report an "item" entry for its modality:

  {"kind": "image", "thumb": "thumbs/<name>.jpg", "file": "<source file>"}
  {"kind": "text", "snippet": "the opening words …", "file": "<source file or None>"}
  {"kind": "image" | "text" | "item", "unavailable": "<reason>", "file": ...}

Thumbnails are small JPEGs written once per item into `thumbs/` beside the pages and referenced
relatively, so a report folder still shows them offline or after a move. An unreadable item
(a missing or corrupt image, an empty text) gets a short placeholder, never an error. `html` and
`markdown` render an entry for the two pages.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path

THUMB_DIR = "thumbs"
THUMB_PX = 96  # longest side of a thumbnail, in pixels
SNIPPET_WORDS = 25
# Chinese and Japanese texts have no spaces between words: their opening "words" are cut by
# width as well, a wide character counting as two.
SNIPPET_WIDTH = 160
ELLIPSIS = "\u2026"
_TEXT_SUFFIXES = {".txt", ".text", ".xml", ".md", ".html", ".htm", ".json", ""}
_THUMB_PREFIX = "item-"

CSS = """
.item { display: flex; gap: 0.6em; align-items: flex-start; }
.item .thumb { flex: none; width: 96px; height: 96px; display: flex; align-items: center;
               justify-content: center; background: #f4f4f4; border: 1px solid #ddd; }
.item .thumb img { max-width: 96px; max-height: 96px; display: block; }
.item .missing { font-size: 0.75em; color: #777; text-align: center; padding: 0.3em; }
.item .snippet { font-size: 0.85em; color: #444; margin-top: 0.2em; line-height: 1.35;
                 overflow-wrap: anywhere; }
.item .snippet.missing { text-align: left; padding: 0; font-style: italic; }
.query-item { margin: 0.2em 0 0.6em; }
"""


def _kind(item: Path | str) -> str:
  """ "text" for an inline text or a text file, "image" for any other file."""
  if isinstance(item, str) or Path(item).suffix.lower() in _TEXT_SUFFIXES:
    return "text"
  return "image"


def _width(ch: str) -> int:
  return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def snippet(text: str, words: int = SNIPPET_WORDS, width: int = SNIPPET_WIDTH) -> str:
  """The opening `words` words of `text`, at most `width` columns (a wide character counts as
  two), with an ellipsis when something was left out."""
  parts = text.split()
  short = " ".join(parts[:words])
  cut = len(parts) > words
  used = 0
  for i, ch in enumerate(short):
    used += _width(ch)
    if used > width:
      head = short[:i]
      # Cut at the last space where the text has spaces, so that no word is split.
      space = head.rfind(" ")
      short, cut = (head[:space] if space > len(head) // 2 else head).rstrip(), True
      break
  return short + ELLIPSIS if cut else short


def _thumb_name(pair_id: str, modality: str) -> str:
  digest = hashlib.sha1(f"{pair_id}\0{modality}".encode()).hexdigest()[:16]
  return f"{_THUMB_PREFIX}{digest}.jpg"


def _write_thumb(source: Path, target: Path) -> None:
  """A JPEG of `source` whose longest side is at most THUMB_PX; BadInput if unreadable."""
  from PIL import Image

  from mscross.extractors import images

  image, _ = images.open_rgb(source)
  image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
  image.save(target, "JPEG", quality=85)


class _Items:
  """One report's item entries; each item is read (and its thumbnail written) once."""

  def __init__(self, out_dir: str, raw_items: Mapping[str, Mapping[str, Path | str]]):
    self.thumbs = Path(out_dir) / THUMB_DIR
    self.raw = raw_items
    self.done: dict[tuple[str, str], dict] = {}

  def entry(self, pair_id: str, modality: str) -> dict:
    key = (pair_id, modality)
    if key not in self.done:
      self.done[key] = self._read(pair_id, modality)
    return self.done[key]

  def _read(self, pair_id: str, modality: str) -> dict:
    from mscross.data import raw
    from mscross.extractors import BadInput

    item = self.raw.get(pair_id, {}).get(modality)
    if item is None:
      return {"kind": "item", "unavailable": "no raw item", "file": None}
    kind = _kind(item)
    file = None if isinstance(item, str) else str(item)
    try:
      if kind == "text":
        return {"kind": kind, "snippet": snippet(raw.read_text(item)), "file": file}
      name = _thumb_name(pair_id, modality)
      self.thumbs.mkdir(parents=True, exist_ok=True)
      _write_thumb(Path(item), self.thumbs / name)
      return {"kind": kind, "thumb": f"{THUMB_DIR}/{name}", "file": file}
    except (BadInput, OSError) as exc:
      # OSError: e.g. a thumbnail that cannot be written; the page is still worth having.
      return {"kind": kind, "unavailable": " ".join(str(exc).split()), "file": file}


def attach(report, raw_items: Mapping[str, Mapping[str, Path | str]], out_dir: str) -> None:
  """Gives every shown query and result of `report` (a `report_data.Report`) its item entry
  (module docstring) for the modality it is shown in; thumbnails go into `out_dir`/thumbs.
  Modalities that no raw item has (e.g. Wikipedia's images, which exist as features only) get
  no entry."""
  with_items = {m for modalities in raw_items.values() for m in modalities}
  directions = {d.key: d for d in report.directions}
  items = _Items(out_dir, raw_items)
  for q in report.examples:
    d = directions[q.direction]
    if d.query in with_items:
      q.item = items.entry(q.id, d.query)
    if d.gallery in with_items:
      for r in q.results:
        r.item = items.entry(r.id, d.gallery)
  prune(out_dir, keep={e["thumb"].split("/")[-1] for e in items.done.values() if "thumb" in e})


def prune(out_dir: str, keep: set[str] = frozenset()) -> None:
  """Removes the thumbnails of an earlier report from `out_dir`/thumbs, but those in `keep`, and
  the folder when that leaves it empty; other files there are left alone."""
  folder = Path(out_dir) / THUMB_DIR
  if not folder.is_dir():
    return
  for path in folder.glob(f"{_THUMB_PREFIX}*.jpg"):
    if path.name not in keep:
      path.unlink()
  if not any(folder.iterdir()):
    os.rmdir(folder)


def _placeholder(entry: dict) -> str:
  return f"{entry['kind']} unavailable"


def html(entry: dict | None) -> str:
  """The HTML of an item entry: a thumbnail, or the text's opening words, or a placeholder
  whose tooltip gives the reason; "" for no entry."""
  if entry is None:
    return ""
  e = html_lib.escape
  title = entry.get("file") or ""
  if "unavailable" in entry:
    reason = e(f"{title}: {entry['unavailable']}" if title else entry["unavailable"], quote=True)
    if entry["kind"] == "text":
      return f'<div class="snippet missing" title="{reason}">{_placeholder(entry)}</div>'
    missing = f'<span class="missing" title="{reason}">{_placeholder(entry)}</span>'
    return f'<div class="thumb">{missing}</div>'
  if entry["kind"] == "image":
    alt = e(os.path.basename(title) or "image", quote=True)
    return (
      f'<div class="thumb"><img src="{e(entry["thumb"], quote=True)}" alt="{alt}" '
      f'title="{e(title, quote=True)}"></div>'
    )
  return f'<div class="snippet">{e(entry["snippet"])}</div>'


def html_cell(entry: dict | None, id_html: str) -> str:
  """An id (already HTML) with its item: the thumbnail left of it, the text's words below."""
  if entry is None:
    return id_html
  if entry["kind"] == "text":
    return f'<div class="item"><div>{id_html}{html(entry)}</div></div>'
  return f'<div class="item">{html(entry)}<div>{id_html}</div></div>'


def query_html(entry: dict | None) -> str:
  """The item of a shown query, for below its heading; "" for no entry."""
  return f'<div class="query-item item">{html(entry)}</div>' if entry else ""


def markdown(entry: dict | None) -> str:
  """The Markdown of an item entry for a table cell or a paragraph: the thumbnail as an image,
  the text's words, or a placeholder; "" for no entry."""
  if entry is None:
    return ""
  if "unavailable" in entry:
    return f"*{_placeholder(entry)}*"
  if entry["kind"] == "image":
    return f"![image]({entry['thumb']})"
  # Escaped for a table cell: "|" ends a cell, "<" would start raw HTML, "*" and "_" emphasis.
  text = html_lib.escape(entry["snippet"], quote=False).replace("|", "\\|")
  for ch in "*_`[]":
    text = text.replace(ch, "\\" + ch)
  return text

"""A screenshot of a report folder's index.html, as a person would see it in a browser.

    python bench/report_screenshot.py runs/web_news/report_test            # -> .../index.png
    python bench/report_screenshot.py runs/web_news/report_test --out shot.png --height 4000
    python bench/report_screenshot.py runs/web_news/report_test --at results   # the top-10 lists

Renders the page in headless Chromium (Debian: `apt-get install chromium`; for Chinese or
Japanese texts also `fonts-noto-cjk`, without which their glyphs show as boxes) at
`--width` x `--height` pixels: the page's top part, or with `--at` the part from the element
of that id on ("results": the top-10 results of the shown queries). Exits with a message when
Chromium is missing or writes no image.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
  """The path of the first Chromium-like browser on PATH, None when there is none."""
  for name in BROWSERS:
    path = shutil.which(name)
    if path:
      return path
  return None


def _from_element(page: Path, at: str, copy: Path) -> Path:
  """A copy of `page` that shows it from the element of id `at` on. Headless Chromium paints a
  blank page when it scrolls to a "#fragment" before the screenshot, so the copy hides what
  comes before the element instead; its <base> keeps the page's relative links (thumbnails,
  plots) pointing into the report folder, which is left untouched."""
  text = page.read_text(encoding="utf-8")
  if f'id="{at}"' not in text:
    raise RuntimeError(f"{page} has no element of id {at!r}")
  head = (
    f'<head><base href="{page.parent.as_uri()}/">'
    f"<style>body > :has(~ #{at}) {{ display: none; }}</style>"
  )
  copy.write_text(text.replace("<head>", head, 1), encoding="utf-8")
  return copy


def screenshot(
  report_dir: str | Path,
  out: str | Path,
  *,
  width: int = 1400,
  height: int = 2400,
  at: str | None = None,
  timeout: float = 120.0,
) -> Path:
  """Writes a PNG of `report_dir`/index.html at width x height pixels to `out`, shown from the
  element of id `at` on when given.

  Raises:
    FileNotFoundError: no index.html in `report_dir`.
    RuntimeError: no Chromium on PATH, no element `at`, or Chromium wrote no image.
  """
  page = Path(report_dir).resolve() / "index.html"
  if not page.is_file():
    raise FileNotFoundError(f"{page}: no such file (is {report_dir} a report folder?)")
  browser = find_browser()
  if browser is None:
    raise RuntimeError(
      "no Chromium found on PATH (tried " + ", ".join(BROWSERS) + "); on Debian: "
      "apt-get install chromium fonts-noto-cjk"
    )
  out = Path(out).resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  out.unlink(missing_ok=True)  # a stale image would pass for this run's
  # A profile of its own: a browser already open on the default profile would take the page.
  with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
    profile, url = Path(tmp) / "profile", page.as_uri()
    if at:
      url = _from_element(page, at, Path(tmp) / "page.html").as_uri()
    cmd = [
      browser,
      "--headless",
      "--no-sandbox",  # needed when run as root, as in containers
      "--disable-gpu",
      "--hide-scrollbars",
      "--no-first-run",
      f"--user-data-dir={profile}",
      f"--window-size={width},{height}",
      f"--screenshot={out}",
      url,
    ]
    try:
      run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
      raise RuntimeError(f"{browser} took over {timeout:g} s to render {page}") from exc
  if not out.is_file() or out.stat().st_size == 0:
    tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-10:])
    raise RuntimeError(f"{browser} wrote no screenshot (exit status {run.returncode}):\n{tail}")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("report_dir", help="a report folder written by eval.py --report")
  parser.add_argument("--out", help="the PNG to write (default: <report_dir>/index.png)")
  parser.add_argument("--width", type=int, default=1400, help="window width in pixels")
  parser.add_argument("--height", type=int, default=2400, help="window height in pixels")
  parser.add_argument("--at", help="scroll to the element of this id, e.g. results")
  parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for Chromium")
  args = parser.parse_args(argv)
  out = args.out or str(Path(args.report_dir) / "index.png")
  try:
    path = screenshot(
      args.report_dir, out, width=args.width, height=args.height, at=args.at, timeout=args.timeout
    )
  except (FileNotFoundError, RuntimeError) as exc:
    print(f"report_screenshot: {exc}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())

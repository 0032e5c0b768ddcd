"""Self-contained HTML pages: one shell (page.html) around each page's markup, inline CSS and JS, the data as one
escaped JSON block.

Every string from a run (labels, class names, file names, layer names, the model spec) reaches the page only
inside the JSON block, and the scripts put it into the DOM with ``textContent``; so escaping happens in one
place. A Content-Security-Policy allows inline styles, the page's own scripts (by hash) and ``data:`` images
(and, for a report whose example images are too many to embed, images from the page's own folder), and nothing
else: no request can leave the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..errors import DirscopeError
from ..examples import ExampleImages

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SLOT = re.compile(r"\{\{([A-Z]+)\}\}")


def embed_json(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no character can close the element."""
    text = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], text)


def _template(name: str) -> str:
    return resources.files("dirscope.report").joinpath("templates", name).read_text(encoding="utf-8")


def render_page(page: str, title: str, data: Any, own_images: bool = False) -> str:
    """The HTML of ``page`` (``report`` or ``study``) with its data, scripts and styles inlined;
    ``own_images`` lets it show images from files beside it (``'self'``), as well as ``data:`` ones."""
    script = _template("common.js") + "\n" + _template(f"{page}.js")
    if "</script" in script.lower():
        raise AssertionError("an inline script must not contain </script")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    images = "data: 'self'" if own_images else "data:"
    csp = (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    slots = {
        "PAGE": page,  # the generator marker near the top: `is_page` recognises a page of ours by it
        "CSP": html.escape(csp, quote=False),  # our own constant, inside a double-quoted attribute
        "TITLE": html.escape(title),
        "STYLE": _template("style.css"),
        "DATA": embed_json(data),
        "SCRIPT": script,
        "BODY": _template(f"{page}.html"),  # the page's own markup, inside the head and scripts all pages share
    }
    # one pass, so text inside a slot's value is never taken for another slot
    return _SLOT.sub(lambda m: slots[m.group(1)], _template("page.html"))


def is_page(path: Path, page: str) -> bool:
    """Whether the file at ``path`` is a ``page`` (``report`` or ``study``) dirscope wrote: its generator marker
    (or, for pages written before it, the title) opens the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="dirscope {page}">'.encode() in head or (
        page == "report" and b"<title>dirscope report: " in head
    )


def image_sources(images: ExampleImages, rows: Iterable[int] | None = None) -> dict[int, str]:
    """``data:`` URIs of the given example rows (default: all), PNGs as stored in examples.parquet, never decoded."""
    rows = images if rows is None else rows
    return {int(i): "data:image/png;base64," + base64.b64encode(images.png(int(i))).decode("ascii") for i in rows}


def write_image_folder(images: ExampleImages, folder: Path) -> dict[int, str]:
    """Every example as ``FOLDER/ROW.png`` (the folder replaced whole, if it holds only such files), and each
    one's source relative to a page in the folder's parent."""
    if folder.exists() and not _holds_only_images(folder):
        raise DirscopeError(f"{folder} holds files a report did not write; move it, or write the report elsewhere")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a fresh folder of our own, so no user's folder of a guessable name (FOLDER.old, ...) is ever deleted
    work = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    try:
        sources = _write_pngs(images, work / "new", folder.name)
        if folder.exists():
            folder.rename(work / "old")
        (work / "new").rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sources


def _write_pngs(images: ExampleImages, staging: Path, name: str) -> dict[int, str]:
    """Every example as ``STAGING/ROW.png``; its source as seen from a page beside the folder ``name``."""
    staging.mkdir()
    sources = {}
    for indices, pngs in images.png_groups():
        for row, png in zip(indices.tolist(), pngs, strict=True):
            (staging / f"{row}.png").write_bytes(png)
            sources[row] = f"{quote(name)}/{row}.png"
    return sources


def remove_image_folder(folder: Path) -> None:
    """Delete ``folder`` if it holds only what ``write_image_folder`` writes."""
    if _holds_only_images(folder):
        shutil.rmtree(folder)


def _holds_only_images(folder: Path) -> bool:
    """Whether ``folder`` is a directory of ``ROW.png`` files only: one a report wrote, never a user's own."""
    return folder.is_dir() and all(p.is_file() and p.suffix == ".png" and p.stem.isdigit() for p in folder.iterdir())


def json_number(value: Any, digits: int | None = 4) -> float | None:
    """A float rounded to ``digits`` significant digits (None: exact), or None for NaN/inf/NA (JSON has no NaN)."""
    if value is None or value is pd.NA:
        return None
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number if digits is None else float(f"{number:.{digits}g}")

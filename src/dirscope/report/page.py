"""Self-contained HTML pages: one shell (page.html) around each page's markup, inline CSS and JS, the data as one
escaped JSON block.

Every string from a run (labels, class names, file names, layer names, the model spec) reaches the page only
inside the JSON block, and the scripts put it into the DOM with ``textContent``; so escaping happens in one
place. A Content-Security-Policy allows inline styles, the page's own scripts (by hash) and ``data:`` images,
and nothing else: no request can leave the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

import pandas as pd

from ..examples import ExampleImages

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SLOT = re.compile(r"\{\{([A-Z]+)\}\}")


def embed_json(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no character can close the element."""
    text = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], text)


def _template(name: str) -> str:
    return resources.files("dirscope.report").joinpath("templates", name).read_text(encoding="utf-8")


def render_page(page: str, title: str, data: Any) -> str:
    """The HTML of ``page`` (``report`` or ``study``) with its data, scripts and styles inlined."""
    script = _template("common.js") + "\n" + _template(f"{page}.js")
    if "</script" in script.lower():
        raise AssertionError("an inline script must not contain </script")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    slots = {
        "CSP": html.escape(csp, quote=False),  # our own constant, inside a double-quoted attribute
        "TITLE": html.escape(title),
        "STYLE": _template("style.css"),
        "DATA": embed_json(data),
        "SCRIPT": script,
        "BODY": _template(f"{page}.html"),  # the page's own markup, inside the head and scripts all pages share
    }
    # one pass, so text inside a slot's value is never taken for another slot
    return _SLOT.sub(lambda m: slots[m.group(1)], _template("page.html"))


def example_images(images: ExampleImages, rows: Iterable[int] | None = None) -> dict[int, str]:
    """Base64 PNG of the given example rows (default: all), as stored in examples.parquet, never decoded."""
    return {int(i): base64.b64encode(images.png(int(i))).decode("ascii") for i in (images if rows is None else rows)}


def json_number(value: Any, digits: int | None = 4) -> float | None:
    """A float rounded to ``digits`` significant digits (None: exact), or None for NaN/inf/NA (JSON has no NaN)."""
    if value is None or value is pd.NA:
        return None
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number if digits is None else float(f"{number:.{digits}g}")

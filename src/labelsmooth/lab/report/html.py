"""The HTML pieces of a lab report: escaping, tables, and figures embedded as PNG ``data:`` URIs.

Every user-supplied string (run names, class names, config values) goes through :func:`escape`
on the page and through :func:`figure_text` where it is drawn into a figure; a report page loads
nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..rundir import write_bytes

__all__ = ["embed_figure", "escape", "figure_grid", "figure_text", "table"]


def escape(value) -> str:
    """``str(value)`` with ``&``, ``<``, ``>`` and both quotes escaped for HTML text and attributes.

    >>> escape('<b class="x">&</b>')
    '&lt;b class=&quot;x&quot;&gt;&amp;&lt;/b&gt;'
    """
    return html.escape(str(value), quote=True)


def figure_text(value) -> str:
    r"""``str(value)`` drawn by matplotlib as written: each ``$`` escaped, so that no mathtext
    (``$...$``, which fails on input such as ``$\frac{1}$``) is parsed.

    >>> print(figure_text(r"$\frac{1}$ costs $5"))
    \$\frac{1}\$ costs \$5
    """
    return str(value).replace("$", r"\$")


def table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; every cell is escaped here.

    >>> table(["a"], [["<1>"]])
    '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;1&gt;</td></tr></tbody></table>'
    """
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embed_figure(figure, path: Path, caption: str, *, wide: bool = False) -> str:
    """Save a matplotlib ``figure`` as PNG (100 dpi) at ``path``, atomically; return it as an
    HTML ``<figure>`` whose image is the same PNG as a ``data:`` URI and whose caption sits under
    it. ``wide`` figures span the whole row of a :func:`figure_grid`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    write_bytes(path, buffer.getvalue(), durable=False)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    width, height = (round(v * 100) for v in figure.get_size_inches())
    css = ' class="wide"' if wide else ""
    return (f'<figure{css}><img alt="{escape(caption)}" width="{width}" height="{height}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)} ({escape(path.name)})</figcaption></figure>")


def figure_grid(figures: list[str]) -> str:
    """Figures from :func:`embed_figure` in a responsive grid (as many columns as fit)."""
    return f'<div class="figures">{"".join(figures)}</div>' if figures else ""

"""The report document: content built once as :class:`Section` objects holding blocks (text,
warning, note, table, image, code), and two renderers: ``report.html`` (one self-contained
file, images embedded as base64 PNG, no JavaScript, no external fonts) and ``report.md``
(images linked). Markdown and HTML inline text are escaped: only ``**bold**`` and
``` `code` ``` are formatting."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment


@dataclass


class Block:
    kind: str  # "text", "warning", "note", "table", "image", "code"
    content: Any
    caption: str = ""


@dataclass


class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, kind: str, content: Any, caption: str = "") -> Section:
        self.blocks.append(Block(kind, content, caption))
        return self


def render_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    lines = [f"# {_md(title)}", ""]
    for section in sections:
        lines += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            if block.kind == "warning":
                lines += [f"> **Warning:** {_md(block.content)}", ""]
            elif block.kind == "note":
                lines += [f"> {_md(block.content)}", ""]
            elif block.kind == "table":
                if block.caption:
                    lines += [f"*{_md(block.caption)}*", ""]
                table = block.content.map(lambda v: _md(v).replace("|", "\\|")
                                          if isinstance(v, str) else v)
                table.columns = [_md(str(c)).replace("|", "\\|") for c in table.columns]
                lines += [table.to_markdown(index=False), ""]
            elif block.kind == "image":
                lines += [f"![{_md(block.caption)}]({_relative(block.content, root)})", ""]
            elif block.kind == "code":
                lines += [f"*{_md(block.caption)}*", "", "```yaml", block.content.rstrip(), "```", ""]
            else:
                lines += [_md(block.content), ""]
    return "\n".join(lines)


def _md(text: object) -> str:
    """Markdown inline text in which no HTML tag can open (names of runs and labels come from
    user files: ``<script>`` in one must stay text in a Markdown viewer); ``->`` stays."""
    return str(text).replace("<", "&lt;")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _inline(text: str) -> str:
    """Escape, then turn **bold** and `code` into tags (the report's only inline Markdown)."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _image_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1100px;
       margin: 24px auto; padding: 0 24px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; border-bottom: 2px solid #d0d7de; padding-bottom: 8px; }
h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
nav { font-size: 13px; color: #57606a; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; }
.warning { background: #fff1e5; border-left: 6px solid #d1242f; padding: 10px 14px;
           margin: 12px 0; font-weight: 600; }
.note { background: #f6f8fa; border-left: 4px solid #8c959f; padding: 6px 12px; margin: 8px 0;
        color: #57606a; }
table { border-collapse: collapse; margin: 6px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
.caption { font-size: 13px; color: #57606a; margin: 10px 0 2px; font-style: italic; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #57606a; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px;
      border: 1px solid #d0d7de; }
pre.config { column-count: 3; column-gap: 28px; column-rule: 1px solid #d0d7de; }
footer { margin-top: 40px; font-size: 12px; color: #8c959f; }
</style></head><body>
<h1>{{ title }}</h1>
<nav>{% for s in sections %}<a href="#s{{ loop.index }}">{{ s.title|e }}</a>{% endfor %}</nav>
{% for s in sections %}<section id="s{{ loop.index }}"><h2>{{ s.title|e }}</h2>
{% for b in s.blocks %}{{ b }}
{% endfor %}</section>
{% endfor %}<footer>Written by cxrfuse. Thresholds are chosen on the validation split; metrics
are on the
test split with percentile bootstrap intervals over test studies.</footer>
</body></html>
"""


def _block_html(block: Block) -> str:
    caption = f'<div class="caption">{_inline(block.caption)}</div>' if block.caption else ""
    if block.kind == "warning":
        return f'<div class="warning">&#9888; {_inline(block.content)}</div>'
    if block.kind == "note":
        return f'<div class="note">{_inline(block.content)}</div>'
    if block.kind == "table":
        table = block.content.to_html(index=False, border=0, escape=True, na_rep="-")
        return caption + re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", table)
    if block.kind == "image":
        return (
            f'<figure><img alt="{html.escape(block.caption)}" src="{_image_data(block.content)}">'
            f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
        )
    if block.kind == "code":
        return f'{caption}<pre class="config">{html.escape(block.content)}</pre>'
    return f"<p>{_inline(block.content)}</p>"


def render_html(title: str, sections: Sequence[Section], root: Path) -> str:
    rendered = [{"title": s.title, "blocks": [_block_html(b) for b in s.blocks]} for s in sections]
    template = Environment(autoescape=False).from_string(HTML_TEMPLATE)
    return template.render(title=html.escape(title), sections=rendered)

"""Rewrite the generated command table in docs/control-api.md from engine.api.protocol."""

from pathlib import Path

from engine.api.protocol import DOCS_BEGIN, DOCS_END, render_markdown

doc = Path(__file__).resolve().parent.parent / "docs" / "control-api.md"
text = doc.read_text()
begin, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
doc.write_text(text[:begin] + "\n" + render_markdown() + text[end:])

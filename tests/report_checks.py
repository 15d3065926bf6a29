"""What a report of one run must hold: every figure embedded, non-empty, and its sections."""
from __future__ import annotations

import base64
import re
from pathlib import Path


def assert_report_embeds_figures(html: Path, headings: tuple[str, ...], min_figures: int = 5) -> None:
    """Every <img> of the page is an embedded PNG of real content (not a blank canvas), at
    least `min_figures` of them (loss, suspects, AUM by kind, uncertainty, influence), and
    each heading appears."""
    page = html.read_text()
    imgs = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(imgs) >= min_figures
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for heading in headings:
        assert heading in page

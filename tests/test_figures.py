"""Figures logged as HTML: self-contained and offline, at a fraction of plotly's embedded size."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from con2lib.runs.figure_html import figure_html


def parts(page: str) -> tuple[str, str, str]:
    """The packed plotly.js, the figure's JSON and the page's script."""
    packed = re.search(r'atob\("([A-Za-z0-9+/=]+)"\)', page).group(1)
    spec = re.search(r'<script type="application/json" id="spec">(.*?)</script>', page, re.S).group(1)
    script = re.search(r"<script>\n(.*?)</script>", page, re.S).group(1)
    return packed, spec, script


def test_figure_page_carries_plotly_packed_and_the_figure_as_json() -> None:
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="a </script> label"))
    page = figure_html(fig, "roc")
    packed, spec, _ = parts(page)
    assert gzip.decompress(base64.b64decode(packed)).decode() == get_plotlyjs()  # nothing fetched
    assert json.loads(spec)["data"][0]["name"] == "a </script> label"  # the label does not end the block
    assert "cdn.plot.ly" not in page and len(page) < 0.45 * len(fig.to_html(include_plotlyjs=True))


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_page_unpacks_plotly_and_draws_the_figure_in_a_javascript_engine(tmp_path) -> None:
    page = figure_html(go.Figure(go.Bar(x=["a", "b"], y=[2, 5])))
    _, spec, script = parts(page)
    # plotly.js itself needs a DOM: a stub stands in once it has been unpacked
    script = script.replace("(0, eval)(await new Response(stream).text());",
                            "const js = await new Response(stream).text();"
                            "console.log('unpacked', js.length);"
                            "globalThis.Plotly = {newPlot: (id, d) => console.log('drawn', id, JSON.stringify(d[0].y))};")
    stub = f"globalThis.document = {{getElementById: () => ({{textContent: {json.dumps(spec)}}})}};\n"
    (tmp_path / "page.js").write_text(stub + script)
    out = subprocess.run(["node", str(tmp_path / "page.js")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"unpacked {len(get_plotlyjs())}" in out.stdout and 'drawn figure [2,5]' in out.stdout

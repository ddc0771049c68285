"""The dashboard off-line: the same page as one self-contained HTML file, and matplotlib PNGs.

`write_html` asks the real app for every API path the page can fetch (runs, each run's figures,
each program's detail) and inlines the answers, the page's script and style and the vendored chart
libraries into one file that opens with no server and no network. Inlined JSON escapes `<`, so a
model output holding `</script>` cannot end the data script. `write_png` draws a run's JCT CDF
(with an optional second run), its timeline and its KV usage from the same figures as the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from agentrt.dashboard import data
from agentrt.dashboard.app import STATIC, create_app
from agentrt.store import open_db


def snapshot(db: str, run_ids: list[str] | None = None) -> dict[str, object]:
    """API path -> its JSON answer, for every path the page fetches (all runs unless `run_ids`)."""
    # in-process calls through the real app, no socket
    from fastapi.testclient import TestClient

    with TestClient(create_app(db)) as client:
        def get(path: str):
            response = client.get(path)
            response.raise_for_status()
            return response.json()

        runs = [r for r in get("/api/runs") if run_ids is None or r["id"] in run_ids]
        out: dict[str, object] = {"/api/runs": runs}
        for run in runs:
            base = f"/api/runs/{run['id']}"
            for path in (base, f"{base}/timeline", f"{base}/jct", f"{base}/tools", f"{base}/kv"):
                out[path] = get(path)
            for p in out[f"{base}/timeline"]["programs"]:
                out[f"/api/programs/{p['program_id']}"] = get(f"/api/programs/{p['program_id']}")
    return out


def _script(text: str) -> str:
    return "<script>" + text.replace("</script", "<\\/script") + "</script>"


def write_html(db: str, out: str | Path, run_ids: list[str] | None = None) -> Path:
    page = (STATIC / "index.html").read_text()
    # the page script runs after parsing (defer); inline, it goes to the end of the body instead
    page = page.replace('<script src="static/app.js" defer></script>\n', "")
    page = page.replace("</body>", _script((STATIC / "app.js").read_text()) + "\n</body>")
    page = page.replace('<link rel="stylesheet" href="static/style.css">',
                        "<style>" + (STATIC / "style.css").read_text() + "</style>")
    page = re.sub(r'<script src="static/([\w./-]+)"></script>', lambda m: _script((STATIC / m[1]).read_text()), page)
    payload = json.dumps(snapshot(db, run_ids)).replace("<", "\\u003c")
    page = page.replace("<!-- agentrt:data -->", _script(f"window.AGENTRT_DATA = {payload};"), 1)
    out = Path(out)
    out.write_text(page)
    return out


def write_png(db: str, out_dir: str | Path, run_id: str, compare: str | None = None) -> list[Path]:
    """jct_cdf.png, timeline.png and kv_usage.png of `run_id` (CDF with `compare` too) in `out_dir`."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eng = open_db(db)
    try:
        runs = {r["id"]: r for r in data.list_runs(eng)}
        label = {i: f"{(runs[i]['name'] or 'run')} {i[:8]}" for i in runs}
        written = []

        fig, ax = plt.subplots(figsize=(6, 4))
        for rid in [run_id, compare] if compare else [run_id]:
            pts = data.jct_cdf(eng, rid)["points"]
            ax.step([0.0] + [p["jct_s"] for p in pts], [0.0] + [p["p"] for p in pts], where="post", label=label[rid])
        ax.set(xlabel="JCT (s)", ylabel="fraction of programs", ylim=(0, 1.02), title="JCT distribution")
        ax.legend()
        written.append(_save(fig, out_dir / "jct_cdf.png"))

        tl = data.timeline(eng, run_id)
        colors = {"queue": "#c7c7c7", "prefill": "#f58518", "decode": "#4c78a8", "tool": "#54a24b"}
        fig, ax = plt.subplots(figsize=(9, 0.9 + 0.3 * len(tl["programs"])))
        for p in tl["programs"]:
            ax.barh(p["index"], p["end"] - p["start"], left=p["start"], height=0.85, color="#eef1f5")
        for kind, color in colors.items():
            spans = [s for s in tl["spans"] if s["kind"] == kind]
            ax.barh([s["index"] for s in spans], [s["end"] - s["start"] for s in spans],
                    left=[s["start"] for s in spans], height=0.5, color=color, label=kind)
        for pin in tl["pins"]:
            ax.hlines(pin["index"] - 0.33, pin["start"], pin["end"], colors="#1b7a1b" if pin["kind"] == "pin hit" else "#e45756",
                      linewidth=2)
        ax.invert_yaxis()
        ax.set(xlabel="seconds since run start", ylabel="program", title=f"timeline of {label[run_id]}")
        ax.legend(loc="lower right", fontsize="small")
        written.append(_save(fig, out_dir / "timeline.png"))

        samples = data.kv_usage(eng, run_id)["samples"]
        fig, ax = plt.subplots(figsize=(6, 4))
        if samples:
            ax.stackplot([s["t"] for s in samples], [s["used"] for s in samples], [s["pinned"] for s in samples],
                         labels=["used", "pinned"], colors=["#4c78a8", "#f58518"], step="post")
            ax.legend(loc="upper right", title=f"of {max(s['total'] for s in samples)} blocks")
        else:
            ax.text(0.5, 0.5, "no engine samples in this run", ha="center", transform=ax.transAxes)
        ax.set(xlabel="seconds since run start", ylabel="KV blocks in use", title="KV blocks over time")
        written.append(_save(fig, out_dir / "kv_usage.png"))
        return written
    finally:
        eng.dispose()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path

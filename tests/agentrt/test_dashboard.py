"""The dashboard: its JSON API over a store filled by real runs (tiny random Llama through the embedded
engine, a real function tool, KV pins from a real retention policy), tenancy, a run read while it
writes, the self-contained HTML and PNG exports through the real CLI, and the page itself in a real
headless Chromium (Debian's, driven by Playwright), offline, with untrusted model output shown as text.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest

from agentrt import EmbeddedBackend, Runtime, SamplingParams, StubBackend
from agentrt.dashboard import create_app
from agentrt.report import run_report
from agentrt.retention import Retention
from agentrt.store import EngineSample, LLMCall, ToolCallRow, open_db, read_rows
from agentrt.tools import tool
from agentrt.types import ToolCall
from tests.conftest import serve
from toolpredict.ttl import make_advisor

XSS_OUTPUT = "<script>window.__xss = 'output'</script>"  # model output (an assistant prefill)
XSS_TOOL = "<img src=x onerror=\"window.__xss = 'tool'\">"  # a tool result
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@tool
async def lookup(query: str) -> str:
    """Looks something up (slowly for 'slow' queries)."""
    await anyio.sleep(0.3 if query.startswith("slow") else 0.01)
    return f"found {query} {XSS_TOOL}"


async def agent(ctx, task):
    """Three turns, two tool calls; the first reply starts with markup a browser would run."""
    ctx.user(f"find {task}")
    await ctx.chat(prefill=XSS_OUTPUT, next_tool_call=ToolCall("lookup", {"query": task}, "c1"))
    await ctx.tool("lookup", query=task)
    await ctx.chat(next_tool_call=ToolCall("lookup", {"query": task + " again"}, "c2"))
    await ctx.tool("lookup", query=task + " again")
    return (await ctx.chat(last_turn=True)).text


def real_run(db: str, model_dir: Path, tasks: list[str], *, tenant: str, name: str, policy: str | None) -> str:
    backend = EmbeddedBackend(model=str(model_dir))
    retention = Retention(make_advisor(policy, pin_s=0.15)) if policy else None
    runtime = Runtime(backend, db=db, tools=[lookup], retention=retention, tenant=tenant, name=name,
                      sampling=SamplingParams(temperature=0.0, max_tokens=4), sample_interval_s=0.02)
    return runtime.run(agent, tasks).run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two real runs in one SQLite file: team-a's with fixed 0.15 s pins, team-b's without retention."""
    db = str(tmp_path_factory.mktemp("dashboard") / "runs.db")
    a = real_run(db, tiny_model_dir, ["alpha", "slow beta", "gamma"], tenant="team-a", name="pins", policy="fixed")
    b = real_run(db, tiny_model_dir, ["delta", "epsilon"], tenant="team-b", name="nopins", policy=None)
    return db, a, b


@pytest.fixture(scope="module")
def base_url(runs):
    with serve(create_app(runs[0])) as url:
        yield url


def get(url: str, path: str, key: str | None = None) -> httpx.Response:
    return httpx.get(url + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def test_runs_and_headline_match_the_report(runs, base_url):
    db, a, b = runs
    listed = get(base_url, "/api/runs").json()
    assert [(r["id"], r["programs"], r["live"]) for r in listed] == [(b, 2, False), (a, 3, False)]
    assert listed[1]["config"]["retention"] == "fixed" and listed[0]["config"]["retention"] is None
    head = get(base_url, f"/api/runs/{a}").json()
    rep = run_report(db, a)
    for key in ("programs", "by_status", "jct_mean_s", "jct_p50_s", "jct_p95_s", "jct_p99_s", "makespan_s",
                "throughput_programs_per_s", "llm_calls", "tool_calls", "prompt_tokens", "cached_tokens"):
        assert head[key] == rep[key], key
    assert head["programs"] == 3 and head["llm_calls"] == 9 and head["tool_calls"] == 6
    assert head["prefix_hit_rate"] == pytest.approx(rep["cached_tokens"] / rep["prompt_tokens"])
    assert head["dhd_hit_rate"] == 0.0  # recorded per call by the embedded backend; no KV reuse configured
    # every tool call was pinned for (fixed) 0.15 s
    assert sum(head["pins"].values()) == 6 and set(head["pins"]) <= {"hit", "expired", "released"}
    assert get(base_url, f"/api/runs/{b}").json()["pins"] == {}


def test_timeline_spans_follow_the_recorded_calls(runs, base_url):
    db, a, _ = runs
    tl = get(base_url, f"/api/runs/{a}/timeline").json()
    assert sorted(p["index"] for p in tl["programs"]) == [0, 1, 2]
    assert all(0 <= p["start"] < p["end"] for p in tl["programs"])
    kinds = {}
    for s in tl["spans"]:
        assert s["start"] <= s["end"]
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    assert kinds["tool"] == 6 and kinds["decode"] == 9 and kinds["prefill"] == 9
    slow = next(p for p in tl["programs"] if p["index"] == 1)
    slow_tools = [s for s in tl["spans"] if s["kind"] == "tool" and s["program_id"] == slow["program_id"]]
    assert all(s["end"] - s["start"] >= 0.3 for s in slow_tools)
    # a pin per tool call, from the end of the turn that asked for it
    pins = tl["pins"]
    assert sorted((p["index"], p["turn"]) for p in pins) == [(i, t) for i in range(3) for t in (0, 1)]
    assert all(p["ttl_s"] == 0.15 for p in pins)
    calls = {(c["program_id"], c["turn"]): c for c in read_rows(db, LLMCall)}
    for p in pins:
        nxt = calls[(p["program_id"], p["turn"] + 1)]
        assert p["kind"] == ("pin hit" if nxt["pin_held"] else "pin expired" if p["end"] - p["start"] >= 0.15 - 1e-9
                             else "pin released")


def test_cdf_tools_and_kv(runs, base_url):
    db, a, b = runs
    cdf = get(base_url, f"/api/runs/{a}/jct").json()["points"]
    jcts = sorted(p["jct_s"] for p in run_report(db, a)["per_program"])
    assert [p["jct_s"] for p in cdf] == jcts and [p["p"] for p in cdf] == pytest.approx([1 / 3, 2 / 3, 1])
    calls = get(base_url, f"/api/runs/{a}/tools").json()["calls"]
    rows = read_rows(db, ToolCallRow, program_id=[p["id"] for p in run_report(db, a)["per_program"]])
    assert sorted(c["actual_s"] for c in calls) == sorted(r["duration_s"] for r in rows)
    assert all(c["predicted_s"] is not None and c["ttl_s"] == 0.15 for c in calls)
    assert all(c["predicted_s"] is None for c in get(base_url, f"/api/runs/{b}/tools").json()["calls"])
    kv = get(base_url, f"/api/runs/{a}/kv").json()["samples"]
    assert len(kv) == len(read_rows(db, EngineSample, run_id=a)) > 0
    assert all(s["used"] + s["pinned"] + s["free"] == s["total"] and s["pinned"] >= 0 for s in kv)


def test_program_detail_returns_untrusted_text_verbatim(runs, base_url):
    _, a, _ = runs
    pid = get(base_url, f"/api/runs/{a}/timeline").json()["programs"][0]["program_id"]
    detail = get(base_url, f"/api/programs/{pid}").json()
    assert detail["program"]["tenant"] == "team-a" and [t["turn"] for t in detail["turns"]] == [0, 1, 2]
    first = detail["turns"][0]
    assert first["llm_calls"][0]["output"].startswith(XSS_OUTPUT)
    assert first["tool_calls"][0]["arguments"] == {"query": detail["program"]["task"]}
    assert XSS_TOOL in first["tool_calls"][0]["output"]
    assert get(base_url, "/api/programs/nope").status_code == 404
    assert get(base_url, "/api/runs/nope/timeline").status_code == 404


def test_tenants_see_only_their_programs(runs):
    db, a, b = runs
    with serve(create_app(db, {"key-a": "team-a", "key-b": "team-b"})) as url:
        assert get(url, "/api/runs").status_code == 401
        assert get(url, "/api/runs", key="key-c").status_code == 401
        assert [r["id"] for r in get(url, "/api/runs", key="key-a").json()] == [a]
        assert [r["id"] for r in get(url, "/api/runs", key="key-b").json()] == [b]
        b_program = get(url, f"/api/runs/{b}/timeline", key="key-b").json()["programs"][0]["program_id"]
        for path in (f"/api/runs/{b}", f"/api/runs/{b}/timeline", f"/api/runs/{b}/jct", f"/api/runs/{b}/tools",
                     f"/api/runs/{b}/kv", f"/api/programs/{b_program}"):
            assert get(url, path, key="key-a").status_code == 404, path
            assert get(url, path, key="key-b").status_code == 200, path
        assert httpx.get(url + "/api/runs", headers={"X-API-Key": "key-a"}).json()[0]["id"] == a


def test_opening_a_database_another_process_is_creating(tmp_path):
    """A reader (report, dashboard) may open a run's database while the run creates it: here the
    other side creates every table between our existence check and our first CREATE."""
    from sqlalchemy import event, inspect

    from agentrt.store import Base, Run

    db = str(tmp_path / "new.db")
    raced = []

    def other_process_creates_the_schema(target, connection, **kw):
        if not raced:
            raced.append(True)
            open_db(db).dispose()

    event.listen(Run.__table__, "before_create", other_process_creates_the_schema)
    try:
        eng = open_db(db)
    finally:
        event.remove(Run.__table__, "before_create", other_process_creates_the_schema)
    assert raced
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspect(eng).get_table_names())
    assert read_rows(eng, Run) == []
    eng.dispose()


def test_a_database_from_before_the_dashboard_columns_stays_readable(tmp_path):
    import sqlite3

    db = str(tmp_path / "old.db")
    open_db(db).dispose()
    with sqlite3.connect(db) as conn:  # the schema as it was: no tenant, no pin_held
        conn.execute("DROP INDEX ix_programs_tenant")
        conn.execute("ALTER TABLE programs DROP COLUMN tenant")
        conn.execute("ALTER TABLE llm_calls DROP COLUMN pin_held")
        conn.execute("INSERT INTO runs (id, started_at) VALUES ('r', 1.0)")
        conn.execute("INSERT INTO programs (id, run_id, \"index\", status, arrival_at, finished_at, jct_s) "
                     "VALUES ('p', 'r', 0, 'finished', 1.0, 3.0, 2.0)")
    with serve(create_app(db)) as url:
        assert get(url, "/api/runs/r").json()["jct_p50_s"] == 2.0
        assert get(url, "/api/programs/p").json()["program"]["tenant"] is None


def poll(fetch, until, timeout_s: float = 60.0):
    """fetch() until until(value) holds (the store commits every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"gave up waiting; last: {value}"
        time.sleep(0.05)


def test_a_run_is_shown_while_it_writes(tmp_path):
    db = str(tmp_path / "live.db")
    release = threading.Event()

    @tool
    async def wait() -> str:
        """Blocks until the test lets it go."""
        while not release.is_set():
            await anyio.sleep(0.02)
        return "done"

    async def waiting_agent(ctx, task):
        await ctx.chat([{"role": "user", "content": "go"}])
        await ctx.tool("wait")
        return "ok"

    runtime = Runtime(StubBackend(lambda messages, hint: "calling wait"), db=db, tools=[wait])
    thread = threading.Thread(target=runtime.run, args=(waiting_agent, [None, None]))
    thread.start()
    try:
        with serve(create_app(db)) as url:
            listed = poll(lambda: get(url, "/api/runs").json(), lambda r: r and r[0]["programs"] == 2)
            run_id = listed[0]["id"]
            assert listed[0]["live"]
            head = poll(lambda: get(url, f"/api/runs/{run_id}").json(), lambda h: h["llm_calls"] == 2)
            assert head["live"] and head["by_status"] == {"running": 2} and len(head["unfinished"]) == 2
            tl = get(url, f"/api/runs/{run_id}/timeline").json()
            assert len(tl["programs"]) == 2 and all(p["end"] > p["start"] for p in tl["programs"])
            assert {s["kind"] for s in tl["spans"]} == {"queue", "prefill", "decode"}  # the tools still run
            release.set()
            thread.join(timeout=60)
            done = poll(lambda: get(url, f"/api/runs/{run_id}").json(), lambda h: not h["live"])
            assert done["by_status"] == {"finished": 2} and done["tool_calls"] == 2
    finally:
        release.set()
        thread.join(timeout=60)


def agentrt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrt", *args], check=False, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    db, a, b = runs
    out = tmp_path_factory.mktemp("export")
    proc = agentrt("report", "--db", db, "--run", a, "--html", str(out / "page.html"), "--png", str(out / "png"),
                   "--compare", b)
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_writes_a_self_contained_page_and_pngs(runs, exported):
    page = (exported / "page.html").read_text()
    assert 'src="static/' not in page and 'href="static/' not in page
    assert XSS_OUTPUT not in page  # the inlined data escapes '<': no stored text can close the data script
    assert XSS_OUTPUT.replace("<", "\\u003c") in page
    for name in ("jct_cdf.png", "timeline.png", "kv_usage.png"):
        png = (exported / "png" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name


CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (`make install` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str, allowed: str):
    """A page at `url` that may fetch nothing outside `allowed` (the page must work offline)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    outside, errors = [], []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(allowed)
                  else (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url)
    page.wait_for_selector("body[data-ready]", timeout=30_000)
    return page, outside, errors


def check_program_detail_is_text(page, program_id: str) -> None:
    page.click(f"#programs tr[data-program='{program_id}']")
    page.wait_for_selector("#detail:not([hidden]) .turn")
    text = page.inner_text("#detail-body")
    assert XSS_OUTPUT in text and XSS_TOOL in text  # shown, as text
    assert page.locator("#detail-body script, #detail-body img").count() == 0
    assert page.evaluate("window.__xss") is None  # and never run


def test_page_in_a_real_browser(runs, base_url, browser):
    _, a, b = runs
    page, outside, errors = open_page(browser, f"{base_url}/#run={a}", base_url)
    assert page.evaluate("agentrtViews.timeline.scale('y').domain()") == [0, 1, 2]  # a row per program
    assert page.locator("#timeline svg .mark-rect path").count() >= 3 + 9 * 3 + 6  # rows, LLM spans, tools
    assert page.locator("#compare th[data-run]").count() == 1
    page.select_option("#run-b", b)
    page.wait_for_function("document.querySelectorAll('#compare th[data-run]').length === 2")
    assert page.evaluate("agentrtViews.cdf.scale('color').domain().length") == 2  # both runs' CDFs
    heads = [get(base_url, f"/api/runs/{r}").json() for r in (a, b)]
    row = page.locator("#compare tr", has_text="JCT p50").inner_text().split("\t")
    assert row[1:] == [f"{h['jct_p50_s']:.2f}" for h in heads]
    program = get(base_url, f"/api/runs/{a}/timeline").json()["programs"][1]["program_id"]
    check_program_detail_is_text(page, program)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert outside == [] and errors == []


def test_exported_page_works_from_a_file_offline(runs, exported, browser):
    _, a, _ = runs
    page, outside, errors = open_page(browser, (exported / "page.html").as_uri(), "file://")
    assert page.evaluate("agentrtViews.timeline.scale('y').domain()") == [0, 1]  # the newest run: 2 programs
    page.select_option("#run-a", a)
    page.wait_for_function("agentrtViews.timeline.scale('y').domain().length === 3")
    program = page.locator("#programs tr[data-program]").first.get_attribute("data-program")
    check_program_detail_is_text(page, program)
    assert outside == [] and errors == []


def test_page_asks_for_a_tenant_key_and_shows_only_that_tenant(runs, browser):
    db, a, _ = runs
    with serve(create_app(db, {"key-a": "team-a"})) as url:
        page = browser.new_context().new_page()
        page.goto(url + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#key", "key-a")
        page.click("#key-form button")
        page.wait_for_selector("body[data-ready]")
        options = page.locator("#run-a option").all_inner_texts()
        assert len(options) == 1 and a[:8] in options[0]

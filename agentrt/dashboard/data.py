"""The dashboard's figures of runs, read from the store: what the JSON API, the HTML export and the PNG plots show.

Every function takes an SQLAlchemy engine (`agentrt.store.open_db`) and a tenant. Tenant None means
no tenancy: everything is visible. A tenant name limits every figure to that tenant's programs, and a
run or program with none of them does not exist for that tenant (`NotFound`), so one tenant never
reads another's prompts, outputs, tool calls or JCTs. A run's headline is `agentrt.report.summarize`
of the visible rows, so the page and `agentrt report` agree. Timeline times are seconds since the run
started; rows are read afresh on every call, so a run that is still writing shows what it has so far.

Pin outcomes (drawn over tool spans): a non-final turn with a TTL pins its program's KV from the
turn's end for `ttl_s`. The next turn's `pin_held` (recorded by the embedded backend) says whether
the pin was still there when the turn was sent: `hit`; if not, `expired` when the turn came after
the TTL, else `released` (under memory pressure). Without `pin_held` (another backend), the outcome
is inferred from the times alone (`inferred`: true).
"""

from __future__ import annotations

import time

from sqlalchemy import func, select

from agentrt.report import run_rows, summarize
from agentrt.store import EngineSample, LLMCall, Program, Run, ToolCallRow, read_rows


class NotFound(LookupError):
    """No such run or program (or none visible to the tenant)."""


def list_runs(eng, tenant: str | None = None) -> list[dict]:
    """Runs, newest first, with their number of (visible) programs."""
    counts_q = select(Program.run_id, func.count()).group_by(Program.run_id)
    if tenant is not None:
        counts_q = counts_q.where(Program.tenant == tenant)
    with eng.connect() as conn:
        counts = dict(conn.execute(counts_q).all())
    runs = [r for r in read_rows(eng, Run) if tenant is None or r["id"] in counts]
    return [{"id": r["id"], "name": r["name"], "backend": r["backend"], "config": r["config"],
             "started_at": r["started_at"], "finished_at": r["finished_at"], "live": r["finished_at"] is None,
             "programs": counts.get(r["id"], 0)}
            for r in sorted(runs, key=lambda r: r["started_at"], reverse=True)]


def _run(eng, run_id: str, tenant: str | None) -> tuple[dict, list[dict], list[dict], list[dict]]:
    runs = read_rows(eng, Run, id=run_id)
    if not runs:
        raise NotFound(f"no run {run_id!r}")
    programs, llm, tools = run_rows(eng, run_id, tenant)
    if tenant is not None and not programs:
        raise NotFound(f"no run {run_id!r}")
    return runs[0], programs, llm, tools


def _calls_by_turn(llm: list[dict]) -> dict[tuple[str, int], dict]:
    """(program, turn) -> its LLM call; a failed attempt (queued_at 0) yields to the call that worked."""
    return {(c["program_id"], c["turn"]): c for c in sorted(llm, key=lambda c: c["queued_at"])}


def pins(llm: list[dict], tools: list[dict], now: float) -> dict[str, dict]:
    """tool call id -> its pin: start, end (epoch s), ttl_s, outcome (hit / expired / released /
    holding, for a pin still running) and whether the outcome was inferred from times alone."""
    by_turn = _calls_by_turn(llm)
    out = {}
    for t in tools:
        asked = by_turn.get((t["program_id"], t["turn"]))
        if not t["ttl_s"] or asked is None or asked["finished_at"] is None:
            continue
        start = asked["finished_at"]
        expires = start + t["ttl_s"]
        nxt = by_turn.get((t["program_id"], t["turn"] + 1))
        inferred = nxt is not None and nxt["pin_held"] is None
        if nxt is None:
            outcome, end = ("holding", now) if now < expires else ("expired", expires)
        elif nxt["pin_held"] or (inferred and nxt["queued_at"] <= expires):
            outcome, end = "hit", nxt["started_at"] or nxt["queued_at"]
        elif nxt["queued_at"] >= expires:
            outcome, end = "expired", expires
        else:  # gone before both its expiry and the next turn: released under memory pressure
            outcome, end = "released", nxt["queued_at"]
        out[t["id"]] = {"start": start, "end": end, "ttl_s": t["ttl_s"], "outcome": outcome, "inferred": inferred}
    return out


def run_summary(eng, run_id: str, tenant: str | None = None) -> dict:
    """The run's headline (`agentrt.report.summarize`) plus liveness, cache hit rates and pin outcomes."""
    run, programs, llm, tools = _run(eng, run_id, tenant)
    rep = summarize(run, programs, llm, tools)
    outcomes: dict[str, int] = {}
    for pin in pins(llm, tools, time.time()).values():
        outcomes[pin["outcome"]] = outcomes.get(pin["outcome"], 0) + 1
    rep.update({
        "started_at": run["started_at"], "finished_at": run["finished_at"], "live": run["finished_at"] is None,
        "prefix_hit_rate": rep["cached_tokens"] / rep["prompt_tokens"] if rep["prompt_tokens"] else None,
        # DHD (non-prefix KV reuse) is not recorded per call by the engine yet: shown as unknown
        "dhd_hit_rate": rep["reused_tokens"] / rep["prompt_tokens"] if rep["reuse_recorded"] and rep["prompt_tokens"] else None,
        "pins": outcomes,
    })
    return rep


def timeline(eng, run_id: str, tenant: str | None = None) -> dict:
    """One row per program (its extent) and its spans: queue / prefill / decode per LLM turn, tool
    calls, and pins over the tool spans. Times are seconds since the run started."""
    run, programs, llm, tools = _run(eng, run_id, tenant)
    t0, now = run["started_at"], time.time()
    index = {p["id"]: p["index"] for p in programs}
    spans = []
    for c in llm:
        marks = [c["queued_at"], c["started_at"], c["first_token_at"], c["finished_at"]]
        for kind, a, b in zip(("queue", "prefill", "decode"), marks, marks[1:]):
            if a and b:
                spans.append({"program_id": c["program_id"], "index": index[c["program_id"]], "turn": c["turn"],
                              "kind": kind, "start": a - t0, "end": b - t0, "label": f"turn {c['turn']}"})
    for t in tools:
        spans.append({"program_id": t["program_id"], "index": index[t["program_id"]], "turn": t["turn"],
                      "kind": "tool", "start": t["started_at"] - t0, "end": t["finished_at"] - t0,
                      "label": t["name"] + ("" if t["ok"] else " (failed)")})
    pin_of = pins(llm, tools, now)
    pin_rows = [{"program_id": t["program_id"], "index": index[t["program_id"]], "turn": t["turn"],
                 "kind": f"pin {p['outcome']}", "start": p["start"] - t0, "end": p["end"] - t0,
                 "ttl_s": p["ttl_s"], "inferred": p["inferred"]}
                for t in tools if (p := pin_of.get(t["id"]))]
    last = {}
    for s in spans:
        last[s["program_id"]] = max(last.get(s["program_id"], 0.0), s["end"])
    rows = [{"program_id": p["id"], "index": p["index"], "status": p["status"], "turns": p["turns"],
             "jct_s": p["jct_s"], "start": p["arrival_at"] - t0,
             "end": (p["finished_at"] or max(now, t0 + last.get(p["id"], 0.0))) - t0}
            for p in programs]
    return {"run_id": run["id"], "programs": rows, "spans": spans, "pins": pin_rows}


def jct_cdf(eng, run_id: str, tenant: str | None = None) -> dict:
    """Empirical CDF of the finished programs' JCTs: points (jct_s, fraction of programs done by then)."""
    _, programs, _, _ = _run(eng, run_id, tenant)
    jcts = sorted(p["jct_s"] for p in programs if p["status"] == "finished" and p["jct_s"] is not None)
    return {"run_id": run_id, "points": [{"jct_s": j, "p": (i + 1) / len(jcts)} for i, j in enumerate(jcts)]}


def tool_calls(eng, run_id: str, tenant: str | None = None) -> dict:
    """Every tool call's actual and predicted duration (predicted: None without a retention policy)."""
    _, programs, _, tools = _run(eng, run_id, tenant)
    index = {p["id"]: p["index"] for p in programs}
    return {"run_id": run_id, "calls": [
        {"name": t["name"], "program_index": index[t["program_id"]], "turn": t["turn"], "ok": t["ok"],
         "actual_s": t["duration_s"], "predicted_s": t["predicted_duration_s"], "ttl_s": t["ttl_s"]}
        for t in sorted(tools, key=lambda t: t["started_at"])]}


def kv_usage(eng, run_id: str, tenant: str | None = None) -> dict:
    """Engine samples over time: KV blocks used (not pinned), pinned, free; running and waiting requests."""
    run, _, _, _ = _run(eng, run_id, tenant)
    samples = sorted(read_rows(eng, EngineSample, run_id=run_id), key=lambda s: s["t"])
    return {"run_id": run_id, "samples": [
        {"t": s["t"] - run["started_at"], "used": s["blocks_used"] - s["blocks_pinned"], "pinned": s["blocks_pinned"],
         "free": s["blocks_free"], "total": s["blocks_total"], "running": s["running"], "waiting": s["waiting"]}
        for s in samples]}


def program_detail(eng, program_id: str, tenant: str | None = None) -> dict:
    """A program's turns: each LLM call (prompt, output, tokens, times) and the tool calls it asked for
    (arguments, result, duration, prediction, pin). Texts are returned as stored: the page must
    show them as text, never as markup."""
    rows = read_rows(eng, Program, id=program_id)
    if not rows or (tenant is not None and rows[0]["tenant"] != tenant):
        raise NotFound(f"no program {program_id!r}")
    p = rows[0]
    llm = sorted(read_rows(eng, LLMCall, program_id=program_id), key=lambda c: (c["turn"], c["queued_at"]))
    tools = sorted(read_rows(eng, ToolCallRow, program_id=program_id), key=lambda t: t["started_at"])
    pin_of = pins(llm, tools, time.time())
    t0 = p["arrival_at"]

    def rel(t: float | None) -> float | None:
        return None if not t else t - t0

    turns = []
    for turn in sorted({c["turn"] for c in llm} | {t["turn"] for t in tools}):
        calls = [{"prompt": c["prompt"], "output": c["output"], "error": c["error"], "finish_reason": c["finish_reason"],
                  "prompt_tokens": c["prompt_tokens"], "cached_tokens": c["cached_tokens"],
                  "output_tokens": c["output_tokens"], "pin_held": c["pin_held"], "queued_at": rel(c["queued_at"]),
                  "started_at": rel(c["started_at"]), "first_token_at": rel(c["first_token_at"]),
                  "finished_at": rel(c["finished_at"])} for c in llm if c["turn"] == turn]
        tool_rows = [{"name": t["name"], "arguments": t["arguments"], "output": t["output"], "ok": t["ok"],
                      "exit_code": t["exit_code"], "error": t["error"], "duration_s": t["duration_s"],
                      "predicted_s": t["predicted_duration_s"], "ttl_s": t["ttl_s"],
                      "pin": pin_of[t["id"]]["outcome"] if t["id"] in pin_of else None,
                      "started_at": rel(t["started_at"])} for t in tools if t["turn"] == turn]
        turns.append({"turn": turn, "llm_calls": calls, "tool_calls": tool_rows})
    program = {k: p[k] for k in ("id", "run_id", "index", "task", "status", "turns", "jct_s", "result", "error",
                                 "tenant")}
    return {"program": program, "turns": turns}

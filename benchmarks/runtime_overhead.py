"""The runtime's own overhead: 1,000 programs x 10 turns against a backend that answers instantly.

    python benchmarks/runtime_overhead.py [--programs 1000] [--turns 10] [--json OUT]

Every turn is a real `ctx.chat` (hint, messages, stub reply, store row) plus a real Python tool call
(timed, stored, appended). With an instant backend the whole wall time is the runtime's: per-turn
overhead = wall time / (programs x turns), measured with the SQLite store on and off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from agentrt import Runtime, StubBackend, tool


@tool
def lookup(key: str) -> str:
    """Returns a canned value."""
    return f"value of {key}"


def reply(messages, hint):
    return '<tool_call>{"name": "lookup", "arguments": {"key": "k%d"}}</tool_call>' % hint.turn


async def agent(ctx, task):
    ctx.user(f"task {task}")
    for _ in range(ctx.max_turns):
        r = await ctx.chat()
        for call in r.tool_calls:
            await ctx.tool(call)
    return ctx.turn


def measure(programs: int, turns: int, db: str | None) -> dict:
    rt = Runtime(StubBackend(reply), db=db, tools=[lookup], tool_format="hermes", max_turns=turns)
    t0 = time.perf_counter()
    res = rt.run(agent, range(programs))
    wall = time.perf_counter() - t0
    assert all(p.status == "finished" and p.turns == turns for p in res.programs), "lost turns"
    return {"wall_s": wall, "programs_per_s": programs / wall, "per_turn_ms": 1e3 * wall / (programs * turns)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {"programs": args.programs, "turns": args.turns, "repeat": args.repeat}
    for label, with_db in (("no_store", False), ("sqlite_store", True)):
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(measure(args.programs, args.turns, str(Path(tmp) / "o.db") if with_db else None))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out[label] = med
        print(f"{label:>13}: {args.programs} programs x {args.turns} turns in {med['wall_s']:.2f} s -> "
              f"{med['programs_per_s']:.0f} programs/s, {med['per_turn_ms']:.3f} ms per turn (median of {args.repeat})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

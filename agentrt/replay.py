"""Replay of recorded agent sessions as agent programs (for the JCT benchmark).

A traces directory holds JSON lines `{"timestamp" (µs), "input", "output", "session_id"}`; each
session is one program, its requests sorted by timestamp are its turns. Rules of the replay:
- Conversation: turn 0 sends the session's first input as the user message; after turn i the
  "tool" returns the text the next recorded input adds to the previous one (the recorded
  observation, with the recorded reply as the agent saw it), which is appended as the observation.
  The model's own output is generated live and stays in the conversation, so every turn's prompt
  extends the previous turn's prompt and output, as in a real agent.
- Scale (a CPU runs a 135M model): every text segment keeps its first `scale` share of tokens (at
  least `min_segment_tokens`), outputs are generated for the recorded output length capped at
  `max_output_tokens` (with `ignore_eos`), a session stops at `max_turns` or before its context
  would pass `max_context_tokens`.
- Tool pause after turn i, for a reply holding a ```bash command, by `pauses`:
  `buckets` (default): a lognormal draw with the median and mean of its SWE-agent command bucket
  (agentrt/data/swe-agent-tool-buckets.json: re-executed SWE-smith commands);
  `measured`: a real duration of a command of the same bucket, drawn from the project's own timings
  (toolpredict/data/tool_timings.jsonl), rescaled so the bucket's median is the SWE-agent bucket's
  (the shape within a bucket is measured here, its level in SWE-bench-sized repositories); buckets the
  timings lack fall back to the lognormal draw. The mix is long-tailed as real runs are (a few test
  suites and installs hold most of the tool time).
  A reply without a command pauses for the recorded gap to the next request minus 20 ms per output
  token, clipped to [0, 60] s. Pauses are multiplied by `tool_time_scale`. Draws are seeded: every
  policy sees the same pauses.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import anyio

from toolpredict.features import ToolCallRecord

from agentrt.tools import Tool
from agentrt.types import ToolCall

_BUCKETS = json.loads((Path(__file__).with_name("data") / "swe-agent-tool-buckets.json").read_text())
_BASH = re.compile(r"```(?:bash|sh)\s*\n(.*?)```", re.DOTALL)
_GLOBAL_BASH_MEDIAN_S = 0.3095  # the table's "global bash median" (its `use` note)


@dataclass(slots=True)
class ReplayTurn:
    segment: str  # text this turn adds before the model answers (turn 0: the task)
    output_tokens: int
    command: str | None  # the bash command of the recorded reply, if any
    pause_s: float  # tool time after this turn (0 after the last)


@dataclass(slots=True)
class ReplaySession:
    session_id: str
    source: str
    turns: list[ReplayTurn]


def bucket_pause_s(command: str, rng: random.Random) -> float:
    """A lognormal draw with the median and mean of the command's SWE-agent bucket."""
    from toolpredict.features import extract_features

    bucket = extract_features("bash", {"command": command}).bucket
    median = _BUCKETS["median_s"].get(bucket)
    mean = _BUCKETS["mean_s"].get(bucket)
    if median is None:  # fall back to the bucket's family, then to the global bash median
        family = "::".join(bucket.split("::")[:2])
        keys = [k for k in _BUCKETS["median_s"] if k.startswith(family)]
        median = sorted(_BUCKETS["median_s"][k] for k in keys)[len(keys) // 2] if keys else _GLOBAL_BASH_MEDIAN_S
        mean = median
    sigma = math.sqrt(2 * math.log(mean / median)) if mean and mean > median > 0 else 0.0
    return median * math.exp(sigma * rng.gauss(0.0, 1.0))


_PAUSE_MODES = ("buckets", "measured")


def _measured_by_bucket() -> dict[str, list[float]]:
    """The project's own timings (toolpredict/data/tool_timings.jsonl), sorted, by command bucket."""
    from importlib.resources import files

    from toolpredict.features import extract_features, read_records

    by_bucket: dict[str, list[float]] = {}
    for r in read_records(files("toolpredict") / "data" / "tool_timings.jsonl"):
        by_bucket.setdefault(extract_features(r.tool, r.args).bucket, []).append(r.duration_s)
    return {b: sorted(v) for b, v in by_bucket.items()}


def measured_pause_s(command: str, rng: random.Random, measured: dict[str, list[float]]) -> float:
    """A measured duration of the command's bucket at the SWE-agent bucket's level (see the module doc)."""
    from toolpredict.features import extract_features

    bucket = extract_features("bash", {"command": command}).bucket
    samples, level = measured.get(bucket), _BUCKETS["median_s"].get(bucket)
    if not samples or level is None:
        return bucket_pause_s(command, rng)
    own_median = samples[len(samples) // 2]
    return rng.choice(samples) * level / own_median


def _scale(tokenizer, text: str, scale: float, min_tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    keep = max(min_tokens, int(len(ids) * scale))
    return tokenizer.decode(ids[:keep]) if keep < len(ids) else text


def load_sessions(traces: str | Path, tokenizer, *, scale: float = 0.1, min_segment_tokens: int = 16,
                  max_output_tokens: int = 32, max_turns: int = 30, max_context_tokens: int = 3000,
                  tool_time_scale: float = 1.0, seed: int = 0, pauses: str = "buckets") -> list[ReplaySession]:
    if pauses not in _PAUSE_MODES:
        raise ValueError(f"unknown pauses {pauses!r}; choose one of {', '.join(_PAUSE_MODES)}")
    paths = sorted(Path(traces).rglob("*.jsonl"))
    if not paths:
        raise ValueError(f"no *.jsonl trace files under {traces}")
    measured = _measured_by_bucket() if pauses == "measured" else {}
    rows_by_session: dict[str, list[dict]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row["_source"] = path.parent.name
                rows_by_session.setdefault(str(row["session_id"]), []).append(row)
    rng = random.Random(seed)
    sessions = []
    for sid in sorted(rows_by_session):
        rows = sorted(rows_by_session[sid], key=lambda r: r["timestamp"])
        turns, context = [], 0
        for i, row in enumerate(rows[:max_turns]):
            prev = rows[i - 1]["input"] if i else ""
            text = str(row["input"])
            segment = text[len(prev):] if i and text.startswith(prev) else text
            segment = _scale(tokenizer, segment, scale, min_segment_tokens)
            out_tokens = min(max_output_tokens, max(1, len(tokenizer.encode(str(row["output"]), add_special_tokens=False))))
            context += len(tokenizer.encode(segment, add_special_tokens=False)) + out_tokens + 8  # 8: chat markup
            if context > max_context_tokens and turns:
                break
            match = _BASH.search(str(row["output"]))
            command = match.group(1).strip() if match else None
            if i + 1 < len(rows):
                if command:
                    pause = measured_pause_s(command, rng, measured) if measured else bucket_pause_s(command, rng)
                else:
                    gap = (rows[i + 1]["timestamp"] - row["timestamp"]) / 1e6
                    pause = min(60.0, max(0.0, gap - 0.02 * out_tokens))
            else:
                pause = 0.0
            turns.append(ReplayTurn(segment, out_tokens, command, pause * tool_time_scale))
        if turns:
            turns[-1].pause_s = 0.0
            sessions.append(ReplaySession(sid, rows[0]["_source"], turns))
    return sessions


def replay_prior(sessions: list[ReplaySession]) -> list[ToolCallRecord]:
    """The sessions' tool calls with their pauses as durations: what a deployment would have seen
    before (load the sessions with another seed to draw the durations independently of the run's)."""
    return [ToolCallRecord("bash", {"command": t.command or "true"}, t.pause_s, s.session_id, i)
            for s in sessions for i, t in enumerate(s.turns[:-1])]


class ReplayTool(Tool):
    """The recorded tool of one program: sleeps for the turn's pause, returns the next segment."""

    name = "bash"
    description = "Replays the recorded tool call of this turn."

    def __init__(self, session: ReplaySession):
        self.session = session
        self.next_turn = 1

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        prev = self.session.turns[self.next_turn - 1]
        await anyio.sleep(prev.pause_s)
        segment = self.session.turns[self.next_turn].segment
        self.next_turn += 1
        return segment, True, 0


async def replay_agent(ctx, session: ReplaySession) -> int:
    """One recorded session as a program: live LLM turns, recorded tool pauses and observations."""
    tool = ReplayTool(session)
    ctx.toolbox.add(tool)
    ctx.user(session.turns[0].segment)
    n = len(session.turns)
    for i, turn in enumerate(session.turns):
        last = i == n - 1
        call = None if last else ToolCall("bash", {"command": turn.command or "true"}, f"replay-{i}")
        await ctx.chat(max_tokens=turn.output_tokens, ignore_eos=True, last_turn=last, next_tool_call=call)
        if not last:
            await ctx.tool(call)
    return n

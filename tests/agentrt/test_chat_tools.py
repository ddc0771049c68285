"""The embedded engine with native tools (`ChatTemplateToolsBackend`) under the runtime: the calls it
reads out of the model's reply (structured, not a text format the runtime parses) are the ones the
retention callback asks the duration predictor about, so the program's KV is pinned across the tool.

The model is the tiny random one, its replies forced through `on_logits`; the engine's clock stands
still, so a pin cannot expire however slowly a loaded machine runs the tool in between."""

from __future__ import annotations

import time

from agentrt import Runtime, SamplingParams, tool
from agentrt.backends import ChatTemplateToolsBackend, EmbeddedBackend
from agentrt.retention import Retention
from agentrt.store import ToolCallRow, read_rows
from engine import AsyncEngine, Engine
from engine.sim import VirtualClock
from tests.agentrt.test_bfcl import TOOLS_TEMPLATE, _force_first_reply
from toolpredict import PerToolMeanPredictor
from toolpredict.ttl import FixedTTL, TTLAdvisor


class RecordingAdvisor(TTLAdvisor):
    def __init__(self, *args):
        super().__init__(*args)
        self.asked: list[tuple[str, dict]] = []

    def decide(self, tool, args, history, ctx):
        self.asked.append((tool, dict(args or {})))
        return super().decide(tool, args, history, ctx)


@tool
def ls(a: bool = False) -> str:
    """Lists the files."""
    return "a.txt b.txt"


def test_structured_tool_calls_are_predicted_and_pinned(tmp_path, tiny_model_dir):
    engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=4096, scheduling_policy="program",
                    clock=VirtualClock(time.monotonic()))
    engine.tokenizer.chat_template = TOOLS_TEMPLATE
    backend = ChatTemplateToolsBackend(EmbeddedBackend(AsyncEngine(engine)))
    assert backend.setup.native and backend.setup.parser == "hermes"
    _force_first_reply(engine, '<tool_call>\n{"name": "ls", "arguments": {"a": true}}\n</tool_call>', "Done.")
    advisor = RecordingAdvisor(FixedTTL(), PerToolMeanPredictor(prior_s=0.5))  # 0.5 s: a 2 s pin
    db = str(tmp_path / "fc.db")

    async def agent(ctx, task):
        ctx.user("list the files")
        reply = await ctx.chat(tools=[ls])
        assert [(c.name, c.arguments) for c in reply.tool_calls] == [("ls", {"a": True})]
        for call in reply.tool_calls:
            await ctx.tool(call)
        return (await ctx.chat(last_turn=True)).text

    rt = Runtime(backend, db=db, retention=Retention(advisor), tool_format="openai",
                 sampling=SamplingParams(temperature=0.0, max_tokens=48))
    res = rt.run(agent, range(2))
    assert [p.status for p in res.programs] == ["finished"] * 2, [p.error for p in res.programs]
    # the predictor was asked about the structured call (name and arguments), once per program
    assert advisor.asked == [("ls", {"a": True})] * 2
    stats = engine.pins.stats
    assert stats.pins == 2 and stats.hits == 2 and not engine.pins.pins  # each next turn found its pin
    rows = read_rows(db, ToolCallRow)
    assert len(rows) == 2 and all(r["ttl_s"] == 2.0 and r["predicted_duration_s"] == 0.5 for r in rows)


def test_a_backend_that_does_not_parse_the_engine_output_says_so():
    from agentrt import StubBackend

    assert StubBackend().tool_calls_in(object()) is None

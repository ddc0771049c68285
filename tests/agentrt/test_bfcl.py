"""BFCL multi-turn runner: BFCL's own data, tool classes and checker (package bfcl-eval), driven by the runtime.

The oracle runs prove the plumbing end to end (ground-truth calls executed for real, scored 100% by
BFCL's checker); the stub backend stands in for the model only where its words must be known in
advance; the CLI runs use the real engine (a tiny random model with a long context, and the real
default model)."""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys

import pytest

from agentrt import StubBackend
from agentrt.store import LLMCall, ToolCallRow, read_rows
from agentrt.types import ToolCall
from agentrt.workloads.bfcl import (
    CATEGORIES,
    ToolDelay,
    decode_prompt_reply,
    load_tasks,
    run_bfcl,
    score,
)
from engine.config import EngineConfig
from engine.tiny import make_tiny_model


def agentrt(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrt", *args], check=False, capture_output=True, text=True, timeout=600)


def test_oracle_scores_every_category_fully(tmp_path):
    db = str(tmp_path / "oracle.db")
    scores = run_bfcl(StubBackend(lambda messages, hint: "All done."), list(CATEGORIES), limit=3, oracle=True, db=db)
    assert set(scores) == set(CATEGORIES)
    for s in scores.values():
        assert s["entries"] == 3 and s["accuracy"] == 1.0 and s["errors"] == {}
    tools = read_rows(db, ToolCallRow)
    truth = sum(len(step) for c in CATEGORIES for t in load_tasks(c, 3) for step in t.ground_truth)
    assert len(tools) == truth  # every ground-truth call ran once, through ctx.tool
    assert all(t["ok"] for t in tools if t["name"] in ("cd", "mkdir", "ls"))
    # each turn asked the model twice (the calls, then the answer), except turns without calls
    calls = read_rows(db, LLMCall)
    assert len(calls) == sum(s["llm_calls"] for s in scores.values()) > truth // 2


def test_held_out_functions_arrive_on_their_turn():
    task = load_tasks("miss_func", 1)[0]
    turn, docs = next(iter(task.entry["missed_function"].items()))
    held = {d["name"] for d in docs}
    assert held and not held & {d["name"] for d in task.entry["function"]}
    prompts = []

    def reply(messages, hint):
        prompts.append("\n".join(str(m["content"]) for m in messages))
        return "No call."

    run_bfcl(StubBackend(reply), ["miss_func"], limit=1)
    # one LLM call per turn (no calls): the held-out docs reach the prompt on that turn (BFCL's
    # "I have updated some more functions" message), not before
    assert len(prompts) == len(task.entry["question"])
    for i, prompt in enumerate(prompts):
        # (as BFCL sends them: the docs' Python repr in the user message)
        assert all((f"'name': '{name}'" in prompt) == (i >= int(turn)) for name in held)
    assert "I have updated some more functions" in prompts[int(turn)]


def test_prompt_mode_sends_bfcls_own_system_prompt_and_decodes_as_bfcl_does():
    from bfcl_eval.model_handler.utils import system_prompt_pre_processing_chat_model

    task = load_tasks("base", 1)[0]
    expected = system_prompt_pre_processing_chat_model(copy.deepcopy(task.entry["question"][0]),
                                                       task.entry["function"], task.entry["id"])[0]["content"]
    sent = []

    def reply(messages, hint):
        sent.append(copy.deepcopy(messages))
        # BFCL's decoder takes a call list without its brackets, in a code fence, too
        return "```\nls(a=True)\n```" if messages[-1]["role"] == "user" else "Done."

    scores = run_bfcl(StubBackend(reply), ["base"], limit=1)["base"]
    assert sent[0][0] == {"role": "system", "content": expected}  # BFCL's prompt, word for word
    assert all(m[0]["content"] == expected for m in sent)  # and no tool text of the runtime's own
    assert "You are given functions. To call them" not in json.dumps(sent)
    assert sent[1][-1]["role"] == "tool" and sent[1][-2]["content"].startswith("```")
    assert scores["mode"] == "prompt" and scores["entries"] == 1


def test_decoding_follows_bfcl():
    calls = decode_prompt_reply("[cd(folder='doc'), mv(source='a.txt', destination='b.txt')]")
    assert [(c.name, c.arguments) for c in calls] == [("cd", {"folder": "doc"}),
                                                    ("mv", {"source": "a.txt", "destination": "b.txt"})]
    assert decode_prompt_reply("I cannot do that.") == [] and decode_prompt_reply("[]") == []


class NativeStub(StubBackend):
    """An OpenAI-style backend with native tools: it sees the tools and answers with structured calls."""

    name = "native-stub"
    native_tools = True

    def __init__(self):
        super().__init__()
        self.tools_seen = []

    async def chat(self, messages, params, hint, tools=None, last_tool=None, prefill=None, retention=None):
        self.tools_seen.append(tools)
        reply = await super().chat(messages, params, hint, tools, last_tool, prefill, retention)
        if messages[-1]["role"] == "user":
            reply.text, reply.tool_calls = "", [ToolCall("ls", {"a": True}, "call_1")]
        return reply


def test_fc_mode_passes_structured_tools_and_writes_bfcls_files(tmp_path):
    backend = NativeStub()
    scores = run_bfcl(backend, ["base"], limit=2, mode="fc", result_dir=tmp_path, model_name="Org/stub")["base"]
    tools = backend.tools_seen[0]
    assert tools and all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in tools)
    assert scores["mode"] == "fc" and scores["entries"] == 2 and scores["accuracy"] == 0.0
    result = tmp_path / "result" / "Org_stub-FC" / "multi_turn" / "BFCL_v4_multi_turn_base_result.json"
    score_file = tmp_path / "score" / "Org_stub-FC" / "multi_turn" / "BFCL_v4_multi_turn_base_score.json"
    assert sorted(scores["files"]) == sorted([str(result), str(score_file)])
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["id"] for r in rows] == [t.entry["id"] for t in load_tasks("base", 2)]
    # per turn, per step: BFCL's FC result ([{name: arguments JSON}]) until the step without a call
    assert rows[0]["result"][0] == [[{"ls": json.dumps({"a": True})}], "done"]
    header, *failed = [json.loads(line) for line in score_file.read_text().splitlines()]
    assert header == {"accuracy": 0.0, "correct_count": 0, "total_count": 2} and len(failed) == 2
    assert all(f["error"]["error_type"] and f["test_category"] == "multi_turn_base" for f in failed)


TOOLS_TEMPLATE = (  # a Qwen-like template that renders `tools` and assistant `tool_calls` itself
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.tool_calls %}"
    "{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _force_first_reply(engine, first: str, rest: str) -> None:
    """Every program's first reply is `first`, every later one `rest` (then EOS), through on_logits."""
    import torch

    tok = engine.tokenizer

    def on_logits(reqs, logits):
        with torch.inference_mode():
            for row, req in enumerate(reqs):
                ids = tok.encode(first if req.hint.turn == 0 else rest, add_special_tokens=False)
                k = req.num_output_tokens
                logits[row].fill_(float("-inf"))
                logits[row, ids[k] if k < len(ids) else tok.eos_token_id] = 0.0

    engine.on_logits = on_logits


def test_fc_mode_on_the_embedded_engine_goes_through_the_chat_template(tmp_path):
    from agentrt.backends import ChatTemplateToolsBackend, EmbeddedBackend
    from tests.conftest import recording_engine_class

    model = make_tiny_model(tmp_path / "tiny-long", max_position_embeddings=65536)
    aengine = recording_engine_class()(EngineConfig(model=str(model), kv_cache_tokens=65536))
    aengine.engine.tokenizer.chat_template = TOOLS_TEMPLATE
    backend = ChatTemplateToolsBackend(EmbeddedBackend(aengine))
    assert backend.setup.native and backend.setup.parser == "hermes"
    _force_first_reply(aengine.engine, '<tool_call>\n{"name": "ls", "arguments": {"a": true}}\n</tool_call>', "Done.")
    db = str(tmp_path / "fc.db")
    scores = run_bfcl(backend, ["base"], limit=1, mode="fc", db=db, max_tokens=64)["base"]
    prompts = ["".join(p) if all(isinstance(x, str) for x in p) else aengine.engine.tokenizer.decode(p)
               for p in aengine.prompts]
    assert prompts and all("<tools>" in p and '"name": "cd"' in p for p in prompts)  # the template's tools
    # the model's call came back structured, ran on the entry's file system, and was rendered back by
    # the template as an assistant tool_call
    ls = [t for t in read_rows(db, ToolCallRow) if t["name"] == "ls"]
    assert ls and ls[0]["arguments"] == {"a": True} and ls[0]["ok"]
    assert '<tool_call>{"name": "ls", "arguments": {"a": true}}</tool_call>' in prompts[1]
    assert scores["entries"] == 1


def test_model_calls_run_on_the_entrys_own_instances_and_are_scored(tmp_path):
    db = str(tmp_path / "model.db")

    def reply(messages, hint):  # a call on the first step of each turn, then an answer
        return "[ls(a=True)]" if messages[-1]["role"] == "user" else "Here you go."

    scores = run_bfcl(StubBackend(reply), ["base"], limit=2, db=db)["base"]
    ls = [t for t in read_rows(db, ToolCallRow) if t["name"] == "ls"]
    assert len(ls) == sum(len(t.entry["question"]) for t in load_tasks("base", 2))
    # the output is the listing of the entry's own initial file system, as BFCL's class gives it
    first = load_tasks("base", 1)[0].entry["initial_config"]["GorillaFileSystem"]["root"]
    top = next(iter(first.values()))["contents"]
    assert any(all(name in t["output"] for name in top) for t in ls)
    assert scores["accuracy"] == 0.0 and scores["entries"] == 2  # listing files solves none of them


def test_checker_verdicts_on_hand_made_results():
    task = load_tasks("base", 1)[0]
    right = [[[c] for c in turn] for turn in task.ground_truth]
    assert score(task, right)["valid"]
    wrong = [[["ls(a=True)"]] for _ in task.ground_truth]
    assert not score(task, wrong)["valid"]
    assert score(task, right[:-1])["error_type"] == "multi_turn:force_terminated"
    assert score(task, None, "failed")["error_type"] == "program:failed"


def test_tool_delay_distributions():
    assert ToolDelay.parse("none").sample() == 0.0
    assert ToolDelay.parse("fixed:0.25").sample() == 0.25
    lognormal = ToolDelay.parse("lognormal:0.5:0.8", seed=1)
    draws = [lognormal.sample() for _ in range(4000)]
    assert 0.45 < statistics.median(draws) < 0.55 and min(draws) > 0
    trace = ToolDelay.parse("trace")
    assert all(d >= 0 for d in (trace.sample() for _ in range(100)))
    for bad in ("gauss:1", "fixed:-1", "lognormal:0:1", "fixed", "trace:/no/such.jsonl"):
        with pytest.raises(ValueError, match="tool-delay"):
            ToolDelay.parse(bad)
    with pytest.raises(ValueError, match="unknown BFCL category"):
        load_tasks("parallel")


def test_cli_oracle_on_the_real_engine_with_delays(tmp_path):
    # BFCL's system prompt lists every function doc (~40k characters): a long context
    model = make_tiny_model(tmp_path / "tiny-long", max_position_embeddings=65536)
    out, db = tmp_path / "oracle.json", tmp_path / "oracle.db"
    proc = agentrt("bfcl", "--oracle", "--category", "base", "--category", "miss_param", "--limit", "2",
                   "--model", str(model), "--max-tokens", "4", "--tool-delay", "fixed:0.02", "--db", str(db),
                   "--json", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text())
    assert set(scores) == {"base", "miss_param"}, scores
    assert not any(s["failed_programs"] for s in scores.values()), scores
    assert all(s["accuracy"] == 1.0 and s["entries"] == 2 and s["mean_jct_s"] > 0 for s in scores.values())
    tools = read_rows(str(db), ToolCallRow)
    assert tools and all(t["duration_s"] >= 0.02 for t in tools)
    assert "accuracy 100.0%" in proc.stdout
    bad = agentrt("bfcl", "--tool-delay", "uniform:1", "--model", str(model))
    assert bad.returncode == 2 and "tool-delay" in bad.stderr


@pytest.mark.slow
def test_default_model_runs_and_is_scored(tmp_path):
    out, db = tmp_path / "model.json", tmp_path / "model.db"
    # function-calling mode: BFCL's own prompt-mode system prompt (every doc, indented JSON) is longer
    # than SmolLM2's 8k context; the compact tool text of its fallback fits
    proc = agentrt("bfcl", "--mode", "fc", "--category", "base", "--limit", "2", "--max-tokens", "48", "--db", str(db),
                   "--json", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(out.read_text())
    assert s["entries"] == 2 and 0.0 <= s["accuracy"] <= 1.0 and s["mean_jct_s"] > 0
    assert sum(s["errors"].values()) == 2 - s["correct"]
    calls = read_rows(str(db), LLMCall)
    assert len(calls) == s["llm_calls"] >= 8  # at least one LLM call per user turn (4 turns each)
    assert all(c["output_tokens"] > 0 for c in calls)

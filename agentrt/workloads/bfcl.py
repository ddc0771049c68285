"""BFCL v4 multi-turn entries as agent programs, run against BFCL's own tool classes and scored by its own checker.

    scores = run_bfcl(EmbeddedBackend(), ["base"], limit=10, mode="prompt", delay=ToolDelay.parse("lognormal:0.5:1"))

One program per entry (package `bfcl-eval`, its data and code, nothing copied): the entry's user
turns in order; a miss_func entry's empty turn becomes BFCL's "I have updated some more functions"
message and its held-out functions become tools from then on. Two modes, as BFCL has them:

- `prompt` (BFCL's prompting models): BFCL's own default system prompt (its
  `system_prompt_pre_processing_chat_model`, function docs as JSON, answers as a Python list of calls
  `[f(a=1), g(b="x")]`), each reply decoded by BFCL's own decoder (`default_decode_execute_prompting`),
  so that scores compare with BFCL's leaderboard runs of prompting models;
- `fc` (BFCL's function-calling models): structured tools through the model's chat template (the
  backend's native tools: an OpenAI-compatible server, or the embedded engine through
  `agentrt.backends.embedded.ChatTemplateToolsBackend`), the reply's calls read by the model's
  parser (agentrt/toolcalls.py).

Each call runs through BFCL's executor (`execute_multi_turn_func_call`) on this program's instances of
the entry's classes (GorillaFileSystem, TwitterAPI, TradingBot, ... loaded with the entry's initial
config), its result goes back as a tool message, and so on until the model answers without a call or
with a reply that does not decode (BFCL then moves to the next turn), or BFCL's step limit
force-terminates the entry. After the run, BFCL's `multi_turn_checker` compares the states and
results against the ground truth; `write_bfcl_files` writes BFCL's own result and score files.

`oracle=True` still asks the model at every step (the serving path at full length) but runs the
turn's ground-truth calls in its first step, written into the conversation in place of the model's
reply, so it must score 100%.

Invariants: BFCL's executor keeps instances in its module globals, keyed by "model name" and entry
id; every program (and every scoring) uses a name of its own and drops its instances when done.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import math
import random
import statistics
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

from agentrt.backends.base import Backend
from agentrt.context import Context
from agentrt.runtime import Runtime
from agentrt.tools import Tool, ToolBox
from agentrt.types import ToolCall
from engine.params import SamplingParams

CATEGORIES = ("base", "long_context", "miss_func", "miss_param")
MODES = ("prompt", "fc")


# ---- injected tool latency -----------------------------------------------------------------------

@dataclass(slots=True)
class ToolDelay:
    """Latency added to every tool call (BFCL's tools take microseconds), for serving experiments.

    Specs: `none`; `fixed:S` (S seconds); `lognormal:MEDIAN:SIGMA` (MEDIAN·exp(SIGMA·Z), Z standard
    normal: median MEDIAN s, standard deviation SIGMA of the log); `trace[:PATH]` (a duration drawn
    uniformly from the tool-call records of PATH, toolpredict's JSONL; default the package's
    toolpredict/data/tool_timings.jsonl, real shell-command timings of SWE-style programs)."""

    spec: str
    draw: Callable[[random.Random], float] | None
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> ToolDelay:
        kind, _, rest = spec.partition(":")
        values = rest.split(":") if rest else []
        try:
            if kind == "none" and not values:
                draw = None
            elif kind == "fixed" and len(values) == 1 and float(values[0]) >= 0:
                seconds = float(values[0])
                draw = lambda rng: seconds
            elif kind == "lognormal" and len(values) == 2 and float(values[0]) > 0 and float(values[1]) >= 0:
                median, sigma = float(values[0]), float(values[1])
                draw = lambda rng: median * math.exp(sigma * rng.gauss(0.0, 1.0))
            elif kind == "trace":
                durations = _trace_durations(rest or None)
                draw = lambda rng: rng.choice(durations)
            else:
                raise ValueError
        except ValueError as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise ValueError(f"bad --tool-delay {spec!r}{detail}; use none, fixed:S, lognormal:MEDIAN:SIGMA "
                             "(seconds, sigma of the log) or trace[:PATH.jsonl]") from None
        return cls(spec, draw, random.Random(seed))

    def sample(self) -> float:
        return 0.0 if self.draw is None else self.draw(self.rng)


def _trace_durations(path: str | None) -> list[float]:
    from toolpredict.features import read_records

    source = Path(path) if path else resources.files("toolpredict") / "data" / "tool_timings.jsonl"
    if not Path(str(source)).is_file():
        raise ValueError(f"no tool-timings file at {source}")
    durations = [r.duration_s for r in read_records(str(source))]
    if not durations:
        raise ValueError(f"{source} holds no tool-call records")
    return durations


# ---- one program's tools -------------------------------------------------------------------------

def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call in BFCL's executable syntax, the form its executor and checker take."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"


def _executor():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    return multi_turn_utils


def _forget(model_name: str) -> None:
    """Drops the instances BFCL's executor keeps in its module globals for `model_name`."""
    namespace = vars(_executor())
    for key in [k for k in namespace if k.startswith(model_name)]:
        del namespace[key]


class _Session:
    """The live instances of one program's entry, under a model name of its own."""

    def __init__(self, entry: dict, model_name: str):
        self.entry, self.model_name = entry, model_name
        self.long_context = "long_context" in entry["id"]
        _, self.instances = self._execute([])

    def _execute(self, calls: list[str]) -> tuple[list[str], dict]:
        return _executor().execute_multi_turn_func_call(
            calls, self.entry["initial_config"], self.entry["involved_classes"], self.model_name, self.entry["id"],
            long_context=self.long_context)

    def execute(self, text: str) -> str:
        return self._execute([text])[0][0]

    def bind(self, source: str) -> ToolCall:
        """A ground-truth call (`sort('a.pdf')`: BFCL's answers pass some arguments by position) as
        a keyword ToolCall, by the method's own signature."""
        node = ast.parse(source, mode="eval").body
        if not isinstance(node, ast.Call):
            raise TypeError(f"ground-truth call of {self.entry['id']} is not a call: {source!r}")
        name = ast.unparse(node.func)
        method = next((getattr(i, name) for i in self.instances.values() if hasattr(i, name)), None)
        if method is None:
            raise ValueError(f"{self.entry['id']}: no class of {self.entry['involved_classes']} has {name}()")
        bound = inspect.signature(method).bind(*(ast.literal_eval(a) for a in node.args),
                                               **{k.arg: ast.literal_eval(k.value) for k in node.keywords})
        return ToolCall(name, dict(bound.arguments), "call_" + uuid.uuid4().hex[:24], raw=source)


class BFCLFunction(Tool):
    """One BFCL function doc as a tool; a call runs through BFCL's executor on the program's instances."""

    def __init__(self, doc: dict, session: _Session, delay: ToolDelay):
        self.name, self.description = doc["name"], doc.get("description", "")
        # the schema without BFCL's `response` part: a 135M model's 8k context holds ~30 docs only so
        self.parameters = doc.get("parameters", {"type": "dict", "properties": {}})
        self.session, self.delay = session, delay

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        await anyio.sleep(self.delay.sample())
        output = self.session.execute(call_text(self.name, arguments))
        return output, not output.startswith("Error during execution"), None


class _UndescribedToolBox(ToolBox):
    """Runs the entry's functions but describes none of them to the runtime: in prompt mode BFCL's
    own system prompt describes them, so the runtime must add no tool text of its own (nor parse the
    reply: BFCL's decoder does)."""

    def specs(self) -> list[dict]:
        return []


def decode_prompt_reply(text: str) -> list[ToolCall]:
    """A prompt-mode reply's calls, decoded as BFCL decodes a prompting model's reply
    (`default_decode_execute_prompting`); [] where BFCL finds none or cannot decode it (it then ends
    the turn)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import is_empty_execute_response
    from bfcl_eval.model_handler.utils import default_decode_execute_prompting

    try:
        decoded = default_decode_execute_prompting(text)
    except Exception:  # BFCL catches every decoding error the same way: the turn is over
        return []
    if is_empty_execute_response(decoded):
        return []
    calls = []
    for source in decoded:
        node = ast.parse(source, mode="eval").body
        name = ast.unparse(node.func)
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:  # a nested call as an argument: BFCL's executor would fail on it too
            arguments = {"_unparsed": source}
        calls.append(ToolCall(name, arguments, "call_" + uuid.uuid4().hex[:24], raw=source))
    return calls


# ---- the agent program ---------------------------------------------------------------------------

@dataclass(slots=True, repr=False)
class BFCLTask:
    category: str
    entry: dict  # BFCL's test entry: question, initial_config, involved_classes, function, ...
    ground_truth: list[list[str]]
    oracle: bool = False
    delay: ToolDelay = field(default_factory=lambda: ToolDelay.parse("none"))
    mode: str = "prompt"  # prompt: BFCL's system prompt and decoder; fc: tools through the chat template
    # every step's reply as BFCL's result files hold it (prompt: the text; fc: [{name: arguments JSON}])
    responses: list[list[Any]] = field(default_factory=list)

    def __repr__(self) -> str:  # the store's task column: the entry id, not its (large) initial state
        return self.entry["id"]


def bfcl_system_prompt(entry: dict, turn: list[dict]) -> list[dict]:
    """The first turn's messages with BFCL's default prompting system prompt (its own function, on the
    entry's function docs) in front, as BFCL's prompting handlers send them."""
    from bfcl_eval.model_handler.utils import system_prompt_pre_processing_chat_model

    return system_prompt_pre_processing_chat_model(copy.deepcopy(turn), entry["function"], entry["id"])


def openai_docs(docs: list[dict]) -> list[dict]:
    """BFCL's function docs as its function-calling handlers send them: BFCL's own conversion
    (`convert_to_tool`: JSON-schema types for BFCL's `dict`/`float`/..., "object" parameters)."""
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import convert_to_tool

    return [t.get("function", t) for t in convert_to_tool(docs, GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)]


def _fc_reply(calls: list[ToolCall]) -> list[dict]:
    return [{c.name: json.dumps(c.arguments)} for c in calls]  # BFCL's FC handlers' per-step result


async def bfcl_agent(ctx: Context, task: BFCLTask) -> list[list[list[str]]]:
    """Runs one entry; returns its calls per turn, per step (BFCL's decoded model result). Fewer
    turns than the entry has means BFCL's step limit force-terminated it."""
    from bfcl_eval.constants.default_prompts import (
        DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
        DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING,
        MAXIMUM_STEP_LIMIT,
    )

    if task.mode not in MODES:
        raise ValueError(f"unknown BFCL mode {task.mode!r}; choose from {', '.join(MODES)}")
    fc = task.mode == "fc"
    if fc and not ctx.backend.native_tools:
        raise ValueError("BFCL's function-calling mode needs a backend with native tools: an OpenAI-compatible "
                         "server, or the embedded engine through ChatTemplateToolsBackend (agentrt bfcl --mode fc)")
    entry = task.entry
    session = _Session(entry, f"agentrt_{ctx.program_id}")
    task.responses = []
    try:
        describe = openai_docs if fc else list
        tools = [BFCLFunction(doc, session, task.delay) for doc in describe(entry["function"])]
        if not fc:  # BFCL's system prompt describes the tools; the runtime only runs them
            ctx.toolbox = _UndescribedToolBox(tools)
        held_out: dict[str, list[dict]] = entry.get("missed_function", {})
        turns = entry["question"]
        result: list[list[list[str]]] = []
        for turn, messages in enumerate(turns):
            if str(turn) in held_out:
                docs = held_out[str(turn)]
                added = [BFCLFunction(doc, session, task.delay) for doc in describe(docs)]
                tools += added
                for t in added:
                    ctx.toolbox.add(t)
                text = (DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC if fc
                        else DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING.format(functions=docs))
                messages = [{"role": "user", "content": text}]
            elif turn == 0 and not fc:
                messages = bfcl_system_prompt(entry, messages)
            ctx.messages.extend(messages)
            oracle_calls = [session.bind(src) for src in task.ground_truth[turn]] if task.oracle else []
            steps: list[list[str]] = []
            responses: list[Any] = []
            task.responses.append(responses)
            for step in range(MAXIMUM_STEP_LIMIT + 1):
                planned = oracle_calls if step == 0 else []
                last = task.oracle and turn == len(turns) - 1 and not planned
                reply = await ctx.chat(tools=tools if fc else None, tool_format="openai" if fc else "bfcl",
                                       last_turn=last, next_tool_call=planned[0] if planned else None)
                if task.oracle:
                    calls = planned
                    if calls and fc:
                        ctx.messages[-1]["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                            "name": c.name, "arguments": json.dumps(c.arguments)}} for c in calls]
                    elif calls:
                        ctx.messages[-1]["content"] = "[" + ", ".join(c.raw for c in calls) + "]"
                else:
                    calls = reply.tool_calls if fc else decode_prompt_reply(reply.text)
                responses.append(_fc_reply(calls) if fc and calls else ctx.messages[-1].get("content", ""))
                if not calls:
                    break
                steps.append([c.raw if c.raw and "_unparsed" in c.arguments else call_text(c.name, c.arguments)
                              for c in calls])
                for call in calls:
                    await ctx.tool(call)
            else:
                return result  # force-terminated
            result.append(steps)
        return result
    finally:
        _forget(session.model_name)


def score(task: BFCLTask, result: list | None, status: str = "finished") -> dict:
    """BFCL's verdict on one program's calls: {"valid": bool, "error_type": ..., ...}."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import (
        multi_turn_checker,
    )

    if status != "finished" or result is None:
        return {"valid": False, "error_type": f"program:{status}"}
    if len(result) != len(task.ground_truth):  # BFCL's eval runner fails these before the checker
        return {"valid": False, "error_type": "multi_turn:force_terminated"}
    name = f"agentrt_score_{uuid.uuid4().hex}"
    try:
        return multi_turn_checker(result, task.ground_truth, task.entry, f"multi_turn_{task.category}", name)
    finally:
        _forget(name)


# ---- a run over categories -----------------------------------------------------------------------

def load_tasks(category: str, limit: int | None = None, *, oracle: bool = False,
               delay: ToolDelay | None = None, mode: str = "prompt") -> list[BFCLTask]:
    """The first `limit` entries of a multi-turn category with their ground truth, from bfcl-eval's data."""
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")
    if mode not in MODES:
        raise ValueError(f"unknown BFCL mode {mode!r}; choose from {', '.join(MODES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    entries = load_dataset_entry(f"multi_turn_{category}")[:limit]
    truth = {g["id"]: g["ground_truth"] for g in load_ground_truth_entry(f"multi_turn_{category}")}
    delay = delay or ToolDelay.parse("none")
    return [BFCLTask(category, e, truth[e["id"]], oracle, delay, mode) for e in entries]


def run_bfcl(backend: Backend, categories: list[str], *, limit: int | None = None, oracle: bool = False,
             delay: ToolDelay | None = None, db: str | None = None, rate: float | None = None, seed: int = 0,
             max_tokens: int = 128, progress: bool = False, mode: str = "prompt",
             result_dir: str | Path | None = None, model_name: str | None = None) -> dict[str, dict]:
    """Runs the entries of every category as programs of one run; per category: entries, accuracy
    (BFCL's checker), mean JCT (arrival to end of program, scoring excluded) and error types. In `fc`
    mode an embedded backend is wrapped in `ChatTemplateToolsBackend`. With `result_dir`, BFCL's own
    result and score files go there too (`write_bfcl_files`)."""
    tasks = [t for c in categories for t in load_tasks(c, limit, oracle=oracle, delay=delay, mode=mode)]
    from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT

    if mode == "fc" and not backend.native_tools:
        if not hasattr(backend, "aengine"):
            raise ValueError(f"BFCL's function-calling mode needs a backend with native tools, not {backend.name!r}")
        from agentrt.backends.embedded import ChatTemplateToolsBackend

        backend = ChatTemplateToolsBackend(backend)
    max_steps = max(len(t.entry["question"]) for t in tasks) * (MAXIMUM_STEP_LIMIT + 1)
    runtime = Runtime(backend, db=db, tool_format="openai" if mode == "fc" else "bfcl", max_turns=max_steps,
                      progress=progress, sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
                      name=f"bfcl-{'+'.join(categories)}-{mode}{'-oracle' if oracle else ''}")
    run = runtime.run(bfcl_agent, tasks, rate=rate, seed=seed)
    model = model_name or getattr(backend, "model_name", None) or getattr(backend, "model", None) or backend.name
    out: dict[str, dict] = {}
    for category in categories:
        programs = [p for p in run.programs if p.task.category == category]
        verdicts = [score(p.task, p.result, p.status) for p in programs]
        correct = sum(v["valid"] for v in verdicts)
        out[category] = {
            "entries": len(programs), "correct": correct, "accuracy": correct / len(programs),
            "mean_jct_s": statistics.fmean(p.jct_s for p in programs),
            "llm_calls": sum(p.turns for p in programs), "mode": mode, "oracle": oracle, "model": str(model),
            "max_tokens": max_tokens, "tool_delay": (delay or ToolDelay.parse("none")).spec, "run_id": run.run_id,
            "errors": dict(Counter(v.get("error_type", "?") for v in verdicts if not v["valid"])),
            "failed_programs": [p.error.strip().splitlines()[-1] for p in programs if p.status == "failed"],
        }
        if result_dir is not None:
            out[category]["files"] = [str(f) for f in write_bfcl_files(result_dir, _bfcl_model_name(str(model), mode),
                                                                        category, programs, verdicts)]
    return out


def _bfcl_model_name(model: str, mode: str) -> str:
    # BFCL's directory name for a model: no slashes; function-calling runs carry its "-FC" suffix
    name = Path(model).name if "/" in model and Path(model).exists() else model.replace("/", "_")
    return f"{name}-FC" if mode == "fc" else name


def write_bfcl_files(result_dir: str | Path, model_name: str, category: str, programs: list,
                     verdicts: list[dict]) -> list[Path]:
    """BFCL's own files for one category: `result/MODEL/multi_turn/BFCL_v4_multi_turn_CAT_result.json`
    (one line per entry: id, every step's reply per turn, latency) and
    `score/MODEL/multi_turn/BFCL_v4_multi_turn_CAT_score.json` (the accuracy header, then the failed
    entries with the checker's error), the layout `bfcl evaluate` reads and writes."""
    from bfcl_eval.utils import get_directory_structure_by_category, get_file_name_by_category

    test_category = f"multi_turn_{category}"
    sub = get_directory_structure_by_category(test_category)
    result_path = Path(result_dir) / "result" / model_name / sub / get_file_name_by_category(test_category, is_result_file=True)
    score_path = Path(result_dir) / "score" / model_name / sub / get_file_name_by_category(test_category, is_score_file=True)
    rows, failed = [], []
    for p, verdict in zip(programs, verdicts):
        entry_id = p.task.entry["id"]
        rows.append({"id": entry_id, "result": p.task.responses, "latency": p.jct_s, "llm_calls": p.turns,
                     "status": p.status})
        if not verdict["valid"]:
            failed.append({"id": entry_id, "model_name": model_name, "test_category": test_category, "valid": False,
                           "error": {k: v for k, v in verdict.items() if k != "valid"},
                           "model_result_decoded": p.result, "possible_answer": p.task.ground_truth})
    correct = len(programs) - len(failed)
    header = {"accuracy": correct / len(programs) if programs else 0.0, "correct_count": correct,
              "total_count": len(programs)}
    for path, lines in ((result_path, rows), (score_path, [header, *failed])):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line, default=str) + "\n" for line in lines), encoding="utf-8")
    return [result_path, score_path]


def format_scores(scores: dict[str, dict]) -> str:
    lines = []
    for category, s in scores.items():
        line = (f"{category} ({s.get('mode', 'prompt')}): {s['entries']} entries, accuracy {s['accuracy']:.1%} ({s['correct']}/{s['entries']}), "
                f"mean JCT {s['mean_jct_s']:.2f} s, {s['llm_calls']} LLM calls")
        if s["errors"]:
            line += "; errors: " + ", ".join(f"{k} x{n}" for k, n in sorted(s["errors"].items()))
        lines.append(line)
    return "\n".join(lines)

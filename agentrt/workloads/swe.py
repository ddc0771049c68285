"""SWE-bench-format instances as agent programs: a mini-swe-agent-style bash loop in a sandboxed checkout.

    summary = run_swe(EmbeddedBackend(), load_instances("tasks.jsonl"), workdir="swe-work", step_limit=20)

An instance is one JSON line in SWE-bench's format: `instance_id`, `repo`, `base_commit`,
`problem_statement`, plus `test_cmd` (a shell command, run in the repository root, that exits 0 once
the issue is resolved) and optionally SWE-bench's `test_patch` (applied before the tests, never shown
to the model). `repo` (or `repo_path`, which wins, so a real SWE-bench record keeps its `owner/name`)
must be a local git repository: nothing is fetched.

Each program clones its repository into WORKDIR/<instance_id> (its sandbox) at `base_commit` and
loops as mini-swe-agent does: every reply must hold exactly one ```bash block; the command runs in the
checkout (fresh subshell, timeout, output cap) and its `<returncode>`/`<output>` is the next user
message; a reply without exactly one block gets the format error back; `submit` (or mini-swe-agent's
`echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`) ends it, as does the step limit (LLM turns). Its patch is
`git diff` of everything the agent changed against `base_commit`. Evaluation, when asked, applies
the patch (and `test_patch`) to a fresh checkout and runs `test_cmd`: resolved means exit 0.

Every bash action is a timed tool call in the store (tool `bash`, arguments {"command": ...}: what
toolpredict's features read), and `timings_out` also writes them as toolpredict records (JSONL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from agentrt.backends.base import Backend
from agentrt.context import Context
from agentrt.runtime import Runtime
from agentrt.tools import ShellTool
from agentrt.types import ToolResult
from engine.params import SamplingParams

SYSTEM = (
    "You are a helpful assistant that can interact with a computer shell to solve programming tasks.\n"
    "Your response must contain exactly ONE bash code block with ONE command (or commands connected with "
    "&& or ||). Include a THOUGHT section before your command where you explain your reasoning.\n"
    "Every command runs in a new subshell in the repository root. Edit files with sed, cat <<'EOF' > file, "
    "or python. When the issue is fixed, run the command `submit` (alone) to hand in your changes.")

INSTANCE = ("Please solve this issue:\n\n{problem_statement}\n\n"
            "You are in the root of the repository. Find the relevant code, fix it, check your fix, then submit.")

REQUIRED = ("instance_id", "base_commit", "problem_statement", "test_cmd")


class InstanceError(ValueError):
    """An instance that cannot be run as given; the message names it and the fix."""


@dataclass(slots=True, repr=False)
class SWEInstance:
    instance_id: str
    repo_path: Path
    base_commit: str
    problem_statement: str
    test_cmd: str
    test_patch: str | None = None

    def __repr__(self) -> str:  # the store's task column
        return self.instance_id


def load_instances(path: str | Path) -> list[SWEInstance]:
    """Instances of a JSONL file (or a JSON list); every one checked for its fields and local repository."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(s) for s in text.splitlines() if s.strip()]
    except json.JSONDecodeError as exc:
        raise InstanceError(f"{path}: not JSON lines of SWE-bench instances ({exc})") from None
    out = []
    for i, rec in enumerate(records, 1):
        missing = [k for k in REQUIRED if not rec.get(k)]
        if missing or not (rec.get("repo_path") or rec.get("repo")):
            raise InstanceError(f"{path}: instance {i} lacks {', '.join(missing or ['repo'])} "
                                f"(needs {', '.join(REQUIRED)} and repo or repo_path)")
        repo = Path(rec.get("repo_path") or rec["repo"]).expanduser()
        if not (repo / ".git").exists():
            raise InstanceError(f"{path}: instance {rec['instance_id']}: {repo} is not a local git repository "
                                "(set repo_path to a clone; nothing is fetched)")
        out.append(SWEInstance(str(rec["instance_id"]), repo.resolve(), rec["base_commit"], rec["problem_statement"],
                               rec["test_cmd"], rec.get("test_patch") or None))
    if not out:
        raise InstanceError(f"{path}: no instances")
    return out


def _git(*args: str, cwd: Path, stdin: str | None = None) -> str:
    proc = subprocess.run(["git", *args], check=False, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise InstanceError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout


def checkout(instance: SWEInstance, dest: Path) -> Path:
    """A private clone of the instance's repository at `base_commit` (replacing any earlier one)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "--quiet", "--no-checkout", str(instance.repo_path), str(dest), cwd=dest.parent)
    _git("-c", "advice.detachedHead=false", "checkout", "--quiet", instance.base_commit, cwd=dest)
    return dest


def diff(instance: SWEInstance, work: Path) -> str:
    """Everything changed in the checkout against `base_commit`: edits, new files, commits."""
    _git("add", "-A", cwd=work)
    return _git("diff", "--cached", instance.base_commit, cwd=work)


def _env() -> dict[str, str]:
    # this interpreter's bin first, so that `python -m pytest` in a sandbox finds the same packages
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}


def evaluate(instance: SWEInstance, patch: str, work: Path, timeout_s: float = 300) -> tuple[bool, str]:
    """(resolved, test output): the patch and `test_patch` on a fresh checkout, then `test_cmd`."""
    checkout(instance, work)
    for p in (patch, instance.test_patch):
        if p and p.strip():
            try:
                _git("apply", "--whitespace=nowarn", "-", cwd=work, stdin=p)
            except InstanceError as exc:
                return False, f"patch does not apply: {exc}"
    try:
        proc = subprocess.run(["bash", "-c", instance.test_cmd], check=False, cwd=work, capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, **_env()})
    except subprocess.TimeoutExpired:
        return False, f"test command timed out after {timeout_s:g} s"
    return proc.returncode == 0, proc.stdout + proc.stderr


def is_submit(command: str) -> bool:
    return command.strip() == "submit" or "COMPLETE_TASK_AND_SUBMIT" in command


@dataclass(slots=True)
class SWEAgent:
    """The loop; `prefill` starts every reply inside a ```bash block (what a small model needs to act
    at all), off for mini-swe-agent's plain protocol."""

    workdir: Path
    step_limit: int = 20
    prefill: bool = False
    action_timeout_s: float = 60.0

    async def __call__(self, ctx: Context, instance: SWEInstance) -> dict[str, Any]:
        work = await anyio.to_thread.run_sync(checkout, instance, self.workdir / instance.instance_id)
        shell = ShellTool(work, timeout_s=self.action_timeout_s, max_output_bytes=5_000, env=_env())
        ctx.system(SYSTEM)
        ctx.user(INSTANCE.format(problem_statement=instance.problem_statement))
        exit_status, actions = "step_limit", 0
        for _ in range(self.step_limit):
            if self.prefill:
                reply = await ctx.chat(tools=[shell], prefill="```bash\n", stop=["```"], include_stop_str_in_output=True)
            else:
                reply = await ctx.chat(tools=[shell])
            if reply.format_error or not reply.tool_calls:  # no block at all is a format error too
                ctx.user(reply.format_error or "Please always provide EXACTLY ONE action in triple backticks "
                         "(```bash ... ```), found 0 actions. When you are done, run `submit`.")
                continue
            call = reply.tool_calls[0]
            if is_submit(call.arguments["command"]):
                exit_status = "submitted"
                break
            await ctx.tool(call)
            actions += 1
        patch = await anyio.to_thread.run_sync(diff, instance, work)
        return {"instance_id": instance.instance_id, "exit_status": exit_status, "actions": actions, "patch": patch}


def run_swe(backend: Backend, instances: list[SWEInstance], *, workdir: str | Path, step_limit: int = 20,
            prefill: bool = False, db: str | None = None, predictions_out: str | Path | None = None,
            timings_out: str | Path | None = None, run_tests: bool = True, max_tokens: int = 256,
            model_name: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Runs every instance as a program; returns per-instance results and the resolved count, and
    writes SWE-bench's predictions file (`instance_id`, `model_name_or_path`, `model_patch` per line)."""
    from toolpredict.features import ToolCallRecord

    if step_limit < 1:
        raise ValueError(f"--step-limit must be at least 1, got {step_limit}")
    workdir = Path(workdir).resolve()
    records: list[ToolCallRecord] = []
    seq: Counter[str] = Counter()

    def record(ctx: Context, result: ToolResult) -> None:
        records.append(ToolCallRecord(result.call.name, dict(result.call.arguments), result.duration_s,
                                      ctx.program_id, seq[ctx.program_id]))
        seq[ctx.program_id] += 1

    runtime = Runtime(backend, db=db, tool_format="bash", max_turns=step_limit, tool_hooks=[record],
                      sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens), progress=progress,
                      name="swe")
    started = time.time()
    run = runtime.run(SWEAgent(workdir, step_limit, prefill), instances)
    model = model_name or getattr(backend, "model_name", None) or getattr(backend, "model", None) or backend.name
    results = []
    for p in run.programs:
        out = p.result if isinstance(p.result, dict) else {"instance_id": p.task.instance_id, "exit_status": p.status,
                                                           "actions": 0, "patch": "", "error": p.error}
        out = {**out, "jct_s": p.jct_s, "llm_calls": p.turns, "resolved": None}
        if run_tests:
            out["resolved"], out["test_output"] = evaluate(p.task, out["patch"], workdir / f"{p.task.instance_id}.eval")
            out["test_output"] = out["test_output"][-2000:]
        results.append(out)
    if predictions_out:
        with open(predictions_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"instance_id": r["instance_id"], "model_name_or_path": str(model),
                                    "model_patch": r["patch"]}) + "\n" for r in results)
    if timings_out:
        with open(timings_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r.to_json()) + "\n" for r in records)
    resolved = sum(bool(r["resolved"]) for r in results)
    return {"run_id": run.run_id, "instances": len(results), "resolved": resolved if run_tests else None,
            "wall_s": time.time() - started, "actions": len(records), "results": results}


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for r in summary["results"]:
        verdict = {True: "resolved", False: "unresolved", None: "not evaluated"}[r["resolved"]]
        lines.append(f"{r['instance_id']}: {r['exit_status']}, {r['actions']} actions, {r['llm_calls']} LLM calls, "
                     f"patch {len(r['patch'].splitlines())} lines, JCT {r['jct_s']:.1f} s, {verdict}")
    tail = f"{summary['instances']} instances, {summary['actions']} bash actions"
    if summary["resolved"] is not None:
        tail += f", {summary['resolved']} resolved"
    return "\n".join([*lines, tail])

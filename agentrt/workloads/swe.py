"""SWE-bench instances as agent programs: a mini-swe-agent-style bash loop in a sandboxed checkout.

    summary = run_swe(EmbeddedBackend(), load_instances("tasks.jsonl", repo_root="repos"), workdir="swe-work",
                      step_limit=20, workers=4, trajectories_out="trajs")

An instance is one JSON line (or a JSON list) of SWE-bench records as the dataset has them:
`instance_id`, `repo` (`owner/name`), `base_commit`, `problem_statement`, `test_patch`, and
`FAIL_TO_PASS` / `PASS_TO_PASS` (lists of test ids, or the dataset's JSON-encoded strings of them).
The test command is the record's `test_cmd` where it has one, else the repository's default:
`pytest -rA` on the files `test_patch` touches (SWE-bench's test directives; `tests/runtests.py` for
Django, `bin/test -C` for SymPy). Nothing is fetched: the repository is `repo_path`, else
REPO_ROOT/`name`, REPO_ROOT/`owner__name` or REPO_ROOT/`owner/name`, else `repo` as a path; it must
be a local git repository that holds `base_commit`.

Each program clones its repository into WORKDIR/<instance_id> (its sandbox) at `base_commit` and
loops as mini-swe-agent does: every reply must hold exactly one ```bash block; the command runs in the
checkout (fresh subshell, timeout, output cap) and its `<returncode>`/`<output>` is the next user
message; a reply without exactly one block gets the format error back; `submit` (or mini-swe-agent's
`echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`) ends it, as does the step limit (LLM turns). Its patch is
`git diff` of everything the agent changed against `base_commit`. At most `workers` instances run at
once (mini-swe-agent's `--workers`); the others wait for a worker, and their JCT counts the wait.

Evaluation, when asked, applies the patch and `test_patch` to a fresh checkout and runs the test
command: with FAIL_TO_PASS/PASS_TO_PASS, resolved means every one of those tests passed in the log
(SWE-bench's rule, pytest's `-rA` lines read as SWE-bench's log parser reads them); without them, the
command's exit status 0.

Every bash action is a timed tool call in the store (tool `bash`, arguments {"command": ...}: what
toolpredict's features read), and `timings_out` also writes them as toolpredict records (JSONL).
`trajectories_out` writes mini-swe-agent's `<instance_id>/<instance_id>.traj.json` per instance,
rebuilt from the store's rows of the program (its LLM calls' prompts and replies, in turn order).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
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

REQUIRED = ("instance_id", "base_commit", "problem_statement")


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
    fail_to_pass: list[str] = field(default_factory=list)
    pass_to_pass: list[str] = field(default_factory=list)
    repo: str | None = None  # SWE-bench's owner/name

    def __repr__(self) -> str:  # the store's task column
        return self.instance_id


def _test_list(value: Any, what: str, instance_id: str) -> list[str]:
    """FAIL_TO_PASS / PASS_TO_PASS: a list, or the dataset's JSON-encoded string of one."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InstanceError(f"instance {instance_id}: {what} is neither a list nor a JSON list of test ids") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InstanceError(f"instance {instance_id}: {what} must be a list of test ids")
    return value


def patched_files(patch: str | None) -> list[str]:
    """The files a unified diff writes (its `+++ b/...` lines), in order."""
    return [m for m in re.findall(r"^\+\+\+ b/(\S+)", patch or "", re.MULTILINE)]


def default_test_cmd(repo: str | None, test_patch: str | None, tests: list[str]) -> str:
    """SWE-bench's test command for a repository: the test files `test_patch` touches (its test
    directives), else the test ids' files, run with each repository's runner."""
    files = patched_files(test_patch) or sorted({t.split("::")[0] for t in tests if "::" in t or t.endswith(".py")})
    name = (repo or "").lower()
    if name.endswith("django/django"):  # tests/runtests.py takes dotted module names
        mods = [f.removeprefix("tests/").removesuffix(".py").replace("/", ".") for f in files if f.endswith(".py")]
        return "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 " + " ".join(mods)
    if name.endswith("sympy/sympy"):
        return "PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' bin/test -C --verbose " + " ".join(
            shlex.quote(f) for f in files)
    return "python -m pytest -rA --no-header -p no:cacheprovider " + " ".join(shlex.quote(f) for f in files)


def find_repo(rec: dict, repo_root: str | Path | None) -> Path | None:
    if rec.get("repo_path"):
        return Path(rec["repo_path"]).expanduser()
    repo = rec.get("repo")
    if not repo:
        return None
    if repo_root is not None:
        owner, _, name = repo.partition("/")
        for candidate in (name, f"{owner}__{name}", repo):
            path = Path(repo_root).expanduser() / candidate
            if (path / ".git").exists():
                return path
        return Path(repo_root).expanduser() / (name or repo)
    return Path(repo).expanduser()


def load_instances(path: str | Path, repo_root: str | Path | None = None) -> list[SWEInstance]:
    """Instances of a JSONL file (or a JSON list) of SWE-bench records; every one checked for its
    fields and its local repository."""
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
        iid = str(rec["instance_id"])
        f2p = _test_list(rec.get("FAIL_TO_PASS"), "FAIL_TO_PASS", iid)
        p2p = _test_list(rec.get("PASS_TO_PASS"), "PASS_TO_PASS", iid)
        test_cmd = rec.get("test_cmd") or None
        if test_cmd is None and not (f2p or p2p or rec.get("test_patch")):
            raise InstanceError(f"{path}: instance {iid} lacks test_cmd and has no FAIL_TO_PASS, PASS_TO_PASS "
                                "or test_patch to derive a test command from")
        repo = find_repo(rec, repo_root)
        if not (repo / ".git").exists():
            raise InstanceError(f"{path}: instance {iid}: {repo} is not a local git repository "
                                "(set repo_path to a clone, or --repo-root to a folder of clones; nothing is fetched)")
        test_patch = rec.get("test_patch") or None
        out.append(SWEInstance(iid, repo.resolve(), rec["base_commit"], rec["problem_statement"],
                               test_cmd or default_test_cmd(rec.get("repo"), test_patch, f2p + p2p),
                               test_patch, f2p, p2p, rec.get("repo")))
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


_PYTEST_STATUS = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+)", re.MULTILINE)
_PYTEST_STATUS_AFTER = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", re.MULTILINE)
_DJANGO_STATUS = re.compile(r"^(\w+ \([\w.]+\))(?: .*)? \.\.\. (ok|FAIL|ERROR|skipped.*)$", re.MULTILINE)


def parse_test_statuses(log: str) -> dict[str, str]:
    """Test id -> PASSED/FAILED/ERROR/SKIPPED... from a test log, as SWE-bench's log parsers read
    pytest's `-rA` summary (`PASSED path::test`), pytest -v lines and Django's `name (module) ... ok`."""
    out: dict[str, str] = {}
    for status, test in _PYTEST_STATUS.findall(log):
        out[test] = status
    for test, status in _PYTEST_STATUS_AFTER.findall(log):
        out.setdefault(test, status)
    for test, status in _DJANGO_STATUS.findall(log):
        out[test] = {"ok": "PASSED", "FAIL": "FAILED", "ERROR": "ERROR"}.get(status, "SKIPPED")
    return out


def grade(instance: SWEInstance, log: str, exit_code: int) -> dict[str, Any]:
    """SWE-bench's verdict from a test log: resolved iff every FAIL_TO_PASS and PASS_TO_PASS test
    passed (XFAIL counts as passed, as in SWE-bench); with neither, the exit status decides."""
    if not (instance.fail_to_pass or instance.pass_to_pass):
        return {"resolved": exit_code == 0, "FAIL_TO_PASS": None, "PASS_TO_PASS": None}
    statuses = parse_test_statuses(log)
    ok = {"PASSED", "XFAIL"}

    def split(tests):
        return {"success": [t for t in tests if statuses.get(t) in ok],
                "failure": [t for t in tests if statuses.get(t) not in ok]}

    f2p, p2p = split(instance.fail_to_pass), split(instance.pass_to_pass)
    return {"resolved": not f2p["failure"] and not p2p["failure"], "FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p}


def evaluate(instance: SWEInstance, patch: str, work: Path, timeout_s: float = 300) -> tuple[bool, str]:
    """(resolved, test output): the patch and `test_patch` on a fresh checkout, then the test command."""
    resolved, log, _ = evaluate_report(instance, patch, work, timeout_s)
    return resolved, log


def evaluate_report(instance: SWEInstance, patch: str, work: Path,
                    timeout_s: float = 300) -> tuple[bool, str, dict[str, Any]]:
    """evaluate(), plus SWE-bench's per-test report (FAIL_TO_PASS/PASS_TO_PASS successes and failures)."""
    checkout(instance, work)
    for p in (patch, instance.test_patch):
        if p and p.strip():
            try:
                _git("apply", "--whitespace=nowarn", "-", cwd=work, stdin=p)
            except InstanceError as exc:
                return False, f"patch does not apply: {exc}", {"resolved": False, "patch_applied": False}
    try:
        proc = subprocess.run(["bash", "-c", instance.test_cmd], check=False, cwd=work, capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, **_env()})
    except subprocess.TimeoutExpired:
        return False, f"test command timed out after {timeout_s:g} s", {"resolved": False, "timed_out": True}
    log = proc.stdout + proc.stderr
    report = {**grade(instance, log, proc.returncode), "patch_applied": True}
    return report["resolved"], log, report


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
    workers: anyio.CapacityLimiter | None = None  # at most this many instances at once

    async def __call__(self, ctx: Context, instance: SWEInstance) -> dict[str, Any]:
        if self.workers is None:
            return await self.solve(ctx, instance)
        arrived = time.time()
        async with self.workers:
            return {**await self.solve(ctx, instance), "worker_wait_s": time.time() - arrived}

    async def solve(self, ctx: Context, instance: SWEInstance) -> dict[str, Any]:
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
            model_name: str | None = None, progress: bool = False, workers: int | None = None,
            trajectories_out: str | Path | None = None) -> dict[str, Any]:
    """Runs every instance as a program (at most `workers` at once); returns per-instance results and
    the resolved count, and writes SWE-bench's predictions file (`instance_id`, `model_name_or_path`,
    `model_patch` per line) and mini-swe-agent's trajectories where asked."""
    from toolpredict.features import ToolCallRecord

    if step_limit < 1:
        raise ValueError(f"--step-limit must be at least 1, got {step_limit}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if trajectories_out is not None and db is None:
        raise ValueError("trajectories are rebuilt from the store: give a database (--db) too")
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
    limiter = anyio.CapacityLimiter(workers) if workers else None
    run = runtime.run(SWEAgent(workdir, step_limit, prefill, workers=limiter), instances)
    model = model_name or getattr(backend, "model_name", None) or getattr(backend, "model", None) or backend.name
    results = []
    for p in run.programs:
        out = p.result if isinstance(p.result, dict) else {"instance_id": p.task.instance_id, "exit_status": p.status,
                                                           "actions": 0, "patch": "", "error": p.error}
        out = {**out, "program_id": p.program_id, "jct_s": p.jct_s, "llm_calls": p.turns, "resolved": None}
        if run_tests:
            out["resolved"], log, report = evaluate_report(p.task, out["patch"], workdir / f"{p.task.instance_id}.eval")
            out["test_output"], out["tests"] = log[-2000:], report
        results.append(out)
    if predictions_out:
        with open(predictions_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"instance_id": r["instance_id"], "model_name_or_path": str(model),
                                    "model_patch": r["patch"]}) + "\n" for r in results)
    if timings_out:
        with open(timings_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r.to_json()) + "\n" for r in records)
    if trajectories_out:
        for r in results:
            write_trajectory(trajectories_out, db, r, str(model), step_limit=step_limit)
    resolved = sum(bool(r["resolved"]) for r in results)
    return {"run_id": run.run_id, "instances": len(results), "resolved": resolved if run_tests else None,
            "wall_s": time.time() - started, "actions": len(records), "workers": workers, "results": results}


def system_prompt() -> str:
    """The system message the loop sends: SYSTEM with the bash format's text, as the runtime adds it."""
    from agentrt import toolcalls

    return f"{SYSTEM}\n\n{toolcalls.render_tools('bash', [])}"


def rebuild_messages(db: str, program_id: str) -> list[dict]:
    """A program's conversation from the store: the system message, then per LLM call (in turn
    order) the message that asked it and the reply. In this loop exactly one user message (the
    instance, an observation or a format error) precedes each reply, so this is the whole conversation."""
    from agentrt.store import LLMCall, read_rows

    calls = sorted(read_rows(db, LLMCall, program_id=program_id), key=lambda c: c["turn"])
    messages = [{"role": "system", "content": system_prompt()}]
    for c in calls:
        messages.append({"role": "user", "content": c["prompt"] or ""})
        if c["output"] is not None:
            messages.append({"role": "assistant", "content": c["output"]})
    return messages


_EXIT_STATUS = {"submitted": "Submitted", "step_limit": "LimitsExceeded"}


def write_trajectory(out_dir: str | Path, db: str, result: dict[str, Any], model: str, *, step_limit: int) -> Path:
    """mini-swe-agent's trajectory file (`trajectory_format` mini-swe-agent-1) of one instance, at
    OUT/<instance_id>/<instance_id>.traj.json, its messages rebuilt from the store."""
    iid = result["instance_id"]
    messages = rebuild_messages(db, result["program_id"])
    data = {
        "info": {
            "exit_status": _EXIT_STATUS.get(result["exit_status"], result["exit_status"]),
            "submission": result["patch"],
            "model_stats": {"instance_cost": 0.0, "api_calls": result["llm_calls"]},
            "config": {"agent": {"system_template": SYSTEM, "instance_template": INSTANCE, "step_limit": step_limit},
                       "model": {"model_name": model}, "environment": {"environment_class": "local"}},
            "agentrt": {"jct_s": result["jct_s"], "resolved": result["resolved"], "actions": result["actions"]},
        },
        "messages": messages,
        "trajectory_format": "mini-swe-agent-1",
        "instance_id": iid,
    }
    path = Path(out_dir) / iid / f"{iid}.traj.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


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

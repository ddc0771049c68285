"""The main job (`make run`): agent programs explore a real source tree with shell tools, several turns each.

Each program gets its own copy of this project's `engine/` package plus a small test file in a temp
directory (its sandbox), a question about it, and a mini-swe-agent-style loop: the model answers with
one ```bash block per turn, the command runs for real (timeout, output cap), its output goes back,
and so on until the model answers without a command, says COMPLETE_TASK_AND_SUBMIT, or hits the turn
limit. Small models make poor tool calls, so the agent starts its acting turns inside the block
(`prefill="```bash\n"`), format errors are fed back as mini-swe-agent does, and the turn limit ends
the rest. Run with `agentrt run examples/explore_repo.py --programs 6 [--model qwen2.5-coder-0.5b-instruct]`.

`check(task, answer)` grades an answer against the truth, computed from the program's own sandbox
(never from a stored key), so `agentrt run` prints right/wrong beside each program's answer. The
grading is lenient on wording and strict on the fact asked for (a file name, a count, pass/fail).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agentrt import SamplingParams, ShellTool

SYSTEM = (
    "You are a helpful assistant that works in a Linux shell to answer questions about the code in the "
    "current directory. Each reply: one short sentence of thought, then EXACTLY ONE shell command in a "
    "```bash code block. You will see the command's output. Useful commands: ls, grep -rn, cat, sed -n, head, "
    "wc -l, python -m pytest -q. To read a definition, find it with grep -rn, then print its lines with "
    "sed -n START,ENDp FILE. To count files, pipe ls into wc -l. Use only file names you have seen in this "
    "directory. If the output does not answer the question yet, run another command. When you know the "
    "answer, reply with the answer and no code block."
)

# worked exchanges on another tree: small models imitate far better than they follow rules (a single
# one-command example made the 0.5B model reuse its file name and answer after any first output)
EXAMPLE = [
    {"role": "user", "content": "Where is the function parse_args defined, and what does it return?"},
    {"role": "assistant", "content": "I will search for its definition.\n```bash\ngrep -rn \"def parse_args\" .\n```"},
    {"role": "user", "content": "<returncode>0</returncode>\n<output>\n./cli/options.py:14:def parse_args(argv):\n</output>"},
    {"role": "assistant", "content": "Now I read the function.\n```bash\nsed -n 14,30p cli/options.py\n```"},
    {"role": "user", "content": "<returncode>0</returncode>\n<output>\ndef parse_args(argv):\n    parser = build_parser()\n"
                                "    return parser.parse_args(argv)\n</output>"},
    {"role": "assistant", "content": "parse_args is defined in cli/options.py; it returns parser.parse_args(argv), "
                                     "the parsed command-line arguments."},
    {"role": "user", "content": "How many Markdown files are in the docs directory?"},
    {"role": "assistant", "content": "I will count them.\n```bash\nls docs/*.md | wc -l\n```"},
    {"role": "user", "content": "<returncode>0</returncode>\n<output>\n7\n</output>"},
    {"role": "assistant", "content": "There are 7 Markdown files in the docs directory."},
]

QUESTIONS = [
    "Which file defines the class BlockPool? Use grep to find it.",
    "How many Python files are in the engine directory?",
    "Run the tests in test_tree.py with pytest and tell me whether they pass.",
    "What does the function hash_block return? Look at its definition.",
    "Which file in the engine directory is the largest? Use ls -S.",
    "Find where SamplingParams is defined and name two of its fields.",
]

_TEST_FILE = '''\
from engine.block_pool import BlockPool


def test_allocate_and_release():
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    assert pool.num_free == 2
    pool.release(blocks)
    assert pool.num_free == 4
'''

RUNTIME = dict(tool_format="bash", max_turns=5, time_limit_s=300,
               sampling=SamplingParams(temperature=0.0, max_tokens=96))

_ROOT = Path(__file__).resolve().parent.parent


def _sandbox(i: int, base: Path) -> Path:
    work = base / f"program-{i}"
    shutil.copytree(_ROOT / "engine", work / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (work / "test_tree.py").write_text(_TEST_FILE)
    return work


def tasks(n: int) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="agentrt-explore-"))
    atexit.register(shutil.rmtree, base, True)
    return [{"question": QUESTIONS[i % len(QUESTIONS)], "workdir": str(_sandbox(i, base))} for i in range(n)]


async def agent(ctx, task):
    # the venv's python first on PATH, so that `python -m pytest` in the sandbox finds the project
    shell = ShellTool(task["workdir"], timeout_s=20, max_output_bytes=1500,
                      env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                           "PYTHONPATH": task["workdir"]})
    ctx.system(SYSTEM)
    ctx.messages += EXAMPLE
    ctx.user(task["question"])
    act = True  # the next turn must be a command: start the reply inside a bash block
    for _ in range(ctx.max_turns):
        if act:
            reply = await ctx.chat(tools=[shell], prefill="```bash\n", stop=["```"], include_stop_str_in_output=True)
        else:
            reply = await ctx.chat(tools=[shell])
        if reply.format_error:
            ctx.user(reply.format_error)
            act = True
            continue
        if not reply.tool_calls:
            return reply.text
        result = await ctx.tool(reply.tool_calls[0])
        if "COMPLETE_TASK_AND_SUBMIT" in reply.tool_calls[0].arguments.get("command", ""):
            return result.output
        act = False  # after an observation the model may answer, or act again
    return None  # turn limit


# ---- grading: the truth from the sandbox itself ---------------------------------------------------

def _numbers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"(?<![\w.])\d+(?![\w.])", text)}


def _tests_pass(work: Path) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tree.py"], cwd=work,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(work)})
    return proc.returncode == 0


def _dataclass_fields(source: str, cls: str) -> list[str]:
    body = source.split(f"class {cls}", 1)[1].split("\n    def ", 1)[0]
    return re.findall(r"^    (\w+): ", body, re.MULTILINE)


def check(task: dict, answer) -> bool:
    """Whether `answer` (the program's result) states the true answer to `task`'s question."""
    if not isinstance(answer, str) or not answer.strip():
        return False
    text, work = answer.lower(), Path(task["workdir"])
    engine = work / "engine"
    question = QUESTIONS.index(task["question"])
    if question == 0:  # the file that defines BlockPool
        where = [p.name for p in engine.rglob("*.py") if "class BlockPool" in p.read_text()]
        return any(name in text for name in where)
    if question == 1:  # Python files in engine/: directly in it, or in its whole tree
        counts = {len(list(engine.glob("*.py"))), len(list(engine.rglob("*.py")))}
        return bool(counts & _numbers(text))
    if question == 2:  # do the tests pass?
        says_fail = re.search(r"\bfail|\berror|not pass|don't pass|do not pass|did not pass", text) is not None
        says_pass = re.search(r"\bpass", text) is not None and not says_fail
        return says_pass if _tests_pass(work) else says_fail
    if question == 3:  # hash_block returns the blake2b digest (16 bytes) of the chained block
        return re.search(r"digest|bytes|blake2", text) is not None
    if question == 4:  # the largest file directly in engine/
        largest = max((p for p in engine.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
        return largest.name.lower() in text
    if question == 5:  # SamplingParams' module and two of its fields
        source = next(p for p in engine.rglob("*.py") if "class SamplingParams" in p.read_text())
        fields = _dataclass_fields(source.read_text(), "SamplingParams")
        return sum(re.search(rf"\b{f}\b", text) is not None for f in fields) >= 2
    return False

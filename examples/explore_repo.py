"""The main job (`make run`): agent programs explore a real source tree with shell tools, several turns each.

Each program gets its own copy of this project's `engine/` package plus a small test file in a temp
directory (its sandbox), a question about it, and a mini-swe-agent-style loop: the model answers with
one ```bash block per turn, the command runs for real (timeout, output cap), its output goes back,
and so on until the model answers without a command, says COMPLETE_TASK_AND_SUBMIT, or hits the turn
limit. A 135M model makes poor tool calls, so the agent starts its acting turns inside the block
(`prefill="```bash\n"`), format errors are fed back as mini-swe-agent does, and the turn limit ends
the rest. Run with `agentrt run examples/explore_repo.py --programs 6`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from agentrt import SamplingParams, ShellTool

SYSTEM = (
    "You are a helpful assistant that works in a Linux shell to answer questions about the code in the "
    "current directory. Each reply: one short sentence of thought, then EXACTLY ONE shell command in a "
    "```bash code block. You will see the command's output. Useful commands: ls, grep -rn, cat, head, "
    "wc -l, python -m pytest -q. When you know the answer, reply with the answer and no code block."
)

EXAMPLE = [
    {"role": "user", "content": "How many lines does setup.py have?"},
    {"role": "assistant", "content": "I will count them with wc.\n```bash\nwc -l setup.py\n```"},
    {"role": "user", "content": "<returncode>0</returncode>\n<output>\n42 setup.py\n</output>"},
    {"role": "assistant", "content": "setup.py has 42 lines."},
]

QUESTIONS = [
    "Which file defines the class BlockPool? Use grep to find it.",
    "How many Python files are in the engine directory?",
    "Run the tests in test_tree.py with pytest and tell me whether they pass.",
    "What does the function hash_block return? Look at its definition.",
    "List the files in this directory and tell me which one is the largest.",
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
    ctx.messages += EXAMPLE  # one worked exchange: small models imitate far better than they follow rules
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

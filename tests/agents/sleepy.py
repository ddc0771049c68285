"""Test agent for the CLI: one LLM turn, then a real shell command sleeping for the task's seconds."""

from agentrt import SamplingParams, ShellTool

RUNTIME = dict(sampling=SamplingParams(temperature=0.0, max_tokens=4), max_turns=3,
               tools=[ShellTool(".", timeout_s=120)])


def tasks(n):
    return [0.1 if i % 2 == 0 else 20 for i in range(n)]


async def agent(ctx, task):
    await ctx.chat([{"role": "user", "content": "Hello"}])
    result = await ctx.tool("bash", command=f"sleep {task}; echo slept")
    return result.output.strip()

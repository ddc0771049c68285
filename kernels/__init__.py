"""kernels: compute kernels, each with a pure-torch reference of the same signature and a test.

- C kernels for CPUs (kernels/csrc/, compiled on first use with the system cc by `_cc`; a failed
  build where a compiler exists is an error, `KernelBuildError`, never a silent fallback):
  `cpu_attention` (paged decode attention, reference `paged_decode_attention_ref`) and `kv_copy`
  (KVShare's copy of reused K/V with K re-rotated, reference `copy_reused_kv_ref_`).
- Triton kernels for GPUs (tested on CPU under `TRITON_INTERPRET=1`): `paged_attention` (varlen
  queries with explicit positions over a block table, GQA, split-KV decode), `kv_store` (K/V into
  cache slots), `rope` (re-rotate cached K by a position delta). `_triton` makes triton optional:
  the references run without it.
This package knows tensors only; it never imports the engine.
"""

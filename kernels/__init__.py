"""kernels: compute kernels, each with a pure-torch reference of the same signature and a test.

- `cpu_attention`: paged decode attention in C for CPUs (compiled on first use with the system cc),
  reference `paged_decode_attention_ref`.
The Triton kernels for GPUs (paged attention with explicit query positions, KV store, RoPE shift)
land with their own issue; the engine's torch attention backend is their reference too.
"""

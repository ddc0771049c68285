"""kernels: Triton kernels (paged attention, KV store, RoPE shift), each with a torch reference.

Not built yet: it lands with its own issue. The engine's torch attention backend
(`engine.attention.TorchAttentionBackend`) is the reference those kernels will be tested against.
"""

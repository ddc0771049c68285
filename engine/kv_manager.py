"""Per-request KV bookkeeping over the block pool: prefix lookup, slot allocation, caching, freeing.

Rules (vLLM V1's): only full blocks are cached; a request never takes its last token from the cache
(some token must be computed to produce logits), so a prompt of n tokens reuses at most
(n - 1) // block_size blocks; a tenant's salt enters the first block's hash, which chains to the rest.
With KVShare reuse on (`content_scope` "tenant" or "global"), committed blocks also enter the content
index under their tokens (and the tenant's salt, unless reuse crosses tenants). Blocks that hold
reused, approximate KV (after a request's `exact_tokens`) are never committed: an exact prefix hit
must stay exact.
"""

from __future__ import annotations

from engine.block_pool import Block, BlockPool, hash_block
from engine.request import Request


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int, content_scope: str | None = None):
        self.pool = pool
        self.block_size = block_size
        self.content_scope = content_scope  # None: no content index; "tenant" or "global"

    def content_key(self, req: Request, tokens: list[int]) -> tuple:
        return (req.salt if self.content_scope == "tenant" else None, tuple(tokens))

    def _hash_full_blocks(self, req: Request, num_tokens: int) -> None:
        bs = self.block_size
        hashes = req.block_hashes
        for i in range(len(hashes), num_tokens // bs):
            parent = hashes[i - 1] if i else None
            hashes.append(hash_block(parent, req.token_ids[i * bs:(i + 1) * bs], None if i else req.salt))

    def find_cached_prefix(self, req: Request) -> list[Block]:
        """Leading cached blocks for a request that holds no blocks yet."""
        if not self.pool.enable_prefix_caching:
            return []
        limit = req.num_tokens - 1
        self._hash_full_blocks(req, limit)
        hits = []
        for h in req.block_hashes[:limit // self.block_size]:
            block = self.pool.lookup(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def blocks_needed(self, req: Request, num_new_tokens: int, cached: list[Block] = ()) -> int:
        """Free blocks that `allocate` would take (cached hits sitting in the free list count too)."""
        total = req.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        new = -(-total // self.block_size) - len(req.blocks) - len(cached)
        return max(new, 0) + sum(1 for b in cached if b.ref_count == 0)

    def allocate(self, req: Request, num_new_tokens: int, cached: list[Block] = ()) -> bool:
        """Reserves slots for `num_new_tokens` more tokens (after any cached prefix); False if they don't fit."""
        if self.blocks_needed(req, num_new_tokens, cached) > self.pool.num_free:
            return False
        if cached:
            self.pool.acquire(cached)
            req.blocks.extend(cached)
            req.num_computed_tokens += len(cached) * self.block_size
            req.num_committed_blocks = len(req.blocks)
        total = req.num_computed_tokens + num_new_tokens
        new = -(-total // self.block_size) - len(req.blocks)
        if new > 0:
            req.blocks.extend(self.pool.allocate(new))
        return True

    def commit(self, req: Request) -> None:
        """Registers the request's newly completed full blocks in the prefix index."""
        if not self.pool.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(req.num_computed_tokens, req.exact_tokens) // bs
        if full <= req.num_committed_blocks:
            return
        self._hash_full_blocks(req, full * bs)
        hashes = req.block_hashes
        for i in range(req.num_committed_blocks, full):
            key = self.content_key(req, req.token_ids[i * bs:(i + 1) * bs]) if self.content_scope else None
            self.pool.cache_block(req.blocks[i], hashes[i], key, i * bs)
            if key is not None and i:  # link neighbours, so reused spans can extend past block edges
                block, parent = self.pool.lookup(hashes[i]), self.pool.lookup(hashes[i - 1])
                if block is not None and block.content_key is not None:
                    block.parent_hash = hashes[i - 1]
                if parent is not None and parent.content_key is not None:
                    parent.child_hash = hashes[i]
        req.num_committed_blocks = full

    def release_reuse_sources(self, req: Request) -> None:
        """Drops the references a reuse plan holds on its source blocks (taken until the copy)."""
        if req.reuse is not None and req.reuse.sources:
            self.pool.release(req.reuse.sources)
            req.reuse.sources = []

    def free(self, req: Request) -> None:
        self.release_reuse_sources(req)
        self.pool.release(req.blocks[::-1])
        req.blocks = []
        req.num_computed_tokens = 0
        req.num_committed_blocks = 0
        req.exact_tokens = 1 << 62  # recomputed from scratch (or finished): no reused KV left
        req.reuse = None

"""Block pool and prefix index: unit rules plus a hypothesis state machine that checks integrity after every operation."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.block_pool import BlockPool, FreeBlockQueue, Block, hash_block


def test_hash_chain_depends_on_parent_tokens_and_salt():
    a = hash_block(None, [1, 2, 3, 4])
    assert a == hash_block(None, [1, 2, 3, 4])
    assert a != hash_block(None, [1, 2, 3, 5])
    assert a != hash_block(None, [1, 2, 3, 4], salt="tenant-b")
    b1 = hash_block(a, [5, 6, 7, 8])
    assert b1 != hash_block(hash_block(None, [9, 9, 9, 9]), [5, 6, 7, 8])


def test_free_queue_is_lru_and_supports_middle_removal():
    blocks = [Block(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    q.remove(blocks[2])
    assert [b.block_id for b in q] == [0, 1, 3, 4]
    assert q.popleft() is blocks[0]
    q.append(blocks[2])
    assert [b.block_id for b in q] == [1, 3, 4, 2] and q.size == 4


def test_freed_cached_block_is_revived_until_reused():
    pool = BlockPool(4)
    (blk,) = pool.allocate(1)
    h = hash_block(None, [1] * 16)
    assert pool.cache_block(blk, h)
    pool.release([blk])
    assert pool.lookup(h) is blk and pool.num_free == 4
    pool.acquire([blk])
    assert blk.ref_count == 1 and pool.num_free == 3
    pool.release([blk])
    # the cached block sits at the tail of the LRU: 3 other blocks are handed out before it
    others = pool.allocate(3)
    assert blk not in others and pool.lookup(h) is blk
    (again,) = pool.allocate(1)
    assert again is blk and pool.lookup(h) is None  # reuse evicts the old prefix
    pool.check_integrity()


def test_duplicate_prefix_is_not_indexed_twice_and_double_free_is_caught():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    h = hash_block(None, [7] * 16)
    assert pool.cache_block(a, h) and not pool.cache_block(b, h)
    pool.release([a, b])
    with pytest.raises(AssertionError, match="double free"):
        pool.release([a])
    pool.check_integrity()


def test_allocation_beyond_capacity_raises():
    pool = BlockPool(2)
    pool.allocate(2)
    with pytest.raises(MemoryError):
        pool.allocate(1)


class PoolMachine(RuleBasedStateMachine):
    """Random sequences of allocate / cache (prefix and content index) / lookup-and-share / release
    against a model of ownership and of what the content index must answer."""

    def __init__(self):
        super().__init__()
        self.pool = BlockPool(12)
        self.owned: list[list[Block]] = []  # each entry: blocks one "request" holds a reference to
        self.hashes: list[bytes] = []
        self.content: dict[tuple, tuple[Block, int]] = {}  # content key -> (latest block cached with it, position)

    @rule(n=st.integers(1, 5))
    def allocate(self, n):
        if n <= self.pool.num_free:
            new = self.pool.allocate(n)
            self.owned.append(new)
            # a reused free block leaves both indexes: its old content answers no more
            self.content = {k: v for k, v in self.content.items() if v[0] not in new}
        else:
            with pytest.raises(MemoryError):
                self.pool.allocate(n)

    @precondition(lambda self: self.owned)
    @rule(data=st.data(), tokens=st.lists(st.integers(0, 3), min_size=4, max_size=4),
          parent=st.sampled_from([None, b"p1", b"p2"]), salt=st.sampled_from([None, "tenant-a"]),
          indexed=st.booleans(), position=st.integers(0, 64))
    def cache(self, data, tokens, parent, salt, indexed, position):
        blocks = data.draw(st.sampled_from(self.owned))
        blk = data.draw(st.sampled_from(blocks))
        h = hash_block(parent, tokens, salt)
        key = (salt, tuple(tokens)) if indexed else None
        expect = self.pool.lookup(h) is None and blk.block_hash is None
        ok = self.pool.cache_block(blk, h, key, position)
        assert ok == expect
        if ok:
            assert self.pool.lookup(h) is blk
            self.hashes.append(h)
            if key is not None:  # the newest block with this content replaces the older one
                self.content[key] = (blk, position)

    @rule(tokens=st.lists(st.integers(0, 3), min_size=4, max_size=4), salt=st.sampled_from([None, "tenant-a"]))
    def lookup_content(self, tokens, salt):
        key = (salt, tuple(tokens))
        found = self.pool.lookup_content(key)
        expect = self.content.get(key)
        assert found is (expect[0] if expect else None)
        if found is not None:
            assert found.content_key == key and found.position == expect[1] and found.block_hash is not None

    @precondition(lambda self: self.hashes)
    @rule(data=st.data())
    def share(self, data):
        h = data.draw(st.sampled_from(self.hashes))
        blk = self.pool.lookup(h)
        if blk is not None:
            assert blk.block_hash == h
            self.pool.acquire([blk])
            self.owned.append([blk])

    @precondition(lambda self: self.owned)
    @rule(data=st.data())
    def release(self, data):
        blocks = self.owned.pop(data.draw(st.integers(0, len(self.owned) - 1)))
        self.pool.release(blocks[::-1])

    @invariant()
    def integrity(self):
        self.pool.check_integrity()
        held = {}
        for blocks in self.owned:
            for b in blocks:
                held[b.block_id] = held.get(b.block_id, 0) + 1
        for b in self.pool.blocks:
            assert b.ref_count == held.get(b.block_id, 0)
        indexed = {b.block_id for b in self.pool.blocks if b.content_key is not None}
        assert indexed == {b.block_id for b, _ in self.content.values()}

    def teardown(self):
        for blocks in self.owned:
            self.pool.release(blocks)
        self.pool.check_integrity()
        assert self.pool.num_free == self.pool.num_blocks


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)

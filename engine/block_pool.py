"""KV block pool: reference counts, an O(1) LRU free list, and the hash-chained prefix index.

Invariants (checked by `check_integrity()`):
- a block is in the free queue iff its ref_count is 0; ref counts are never negative;
- a block with a hash is in the prefix index under that hash, and the index holds nothing else;
- free blocks keep their hash (and content) until they are reused, so a later request with the same
  prefix can revive them; the free queue hands out the least recently freed block first;
- a block in the content index (KVShare reuse at other positions) also has a hash, and leaves both
  indexes together when it is reused.
A block's hash covers its parent's hash, its tokens and a salt, so equal hashes mean equal prefixes.
The content index keys a block by its tokens alone (plus a scope salt) and remembers the block's
position in its sequence, so that its KV can be copied into another prompt and re-rotated.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence


def hash_block(parent: bytes | None, token_ids: Sequence[int], salt: str | None = None) -> bytes:
    """Chained block hash: equal iff the whole prefix up to and including this block (and the salt) is equal."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"\0" * 16)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    if salt:
        h.update(b"\xffsalt:" + salt.encode())
    return h.digest()


ContentKey = tuple  # (scope salt, token ids of one full block)


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash", "content_key", "position", "parent_hash", "child_hash",
                 "prev", "next")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: bytes | None = None
        self.content_key: ContentKey | None = None  # set while the block is in the content index
        self.position = 0  # position of the block's first token in the sequence that computed it
        # hashes of the blocks before and after it in that sequence (content-indexed blocks only)
        self.parent_hash: bytes | None = None
        self.child_hash: bytes | None = None
        self.prev: Block | None = None
        self.next: Block | None = None

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_count}, cached={self.block_hash is not None})"


class FreeBlockQueue:
    """Intrusive doubly linked list of free blocks; removal from the middle is O(1)."""

    def __init__(self, blocks: Iterable[Block]):
        self.head = Block(-1)
        self.tail = Block(-2)
        self.head.next, self.tail.prev = self.tail, self.head
        self.size = 0
        for b in blocks:
            self.append(b)

    def append(self, block: Block) -> None:
        last = self.tail.prev
        last.next, block.prev, block.next, self.tail.prev = block, last, self.tail, block
        self.size += 1

    def popleft(self) -> Block:
        block = self.head.next
        if block is self.tail:
            raise IndexError("no free blocks")
        self.remove(block)
        return block

    def remove(self, block: Block) -> None:
        block.prev.next, block.next.prev = block.next, block.prev
        block.prev = block.next = None
        self.size -= 1

    def __iter__(self):
        b = self.head.next
        while b is not self.tail:
            yield b
            b = b.next


class PrefixIndex:
    """Maps a chained block hash to the one block that holds that prefix's KV."""

    def __init__(self):
        self._by_hash: dict[bytes, Block] = {}

    def get(self, block_hash: bytes) -> Block | None:
        return self._by_hash.get(block_hash)

    def insert(self, block: Block, block_hash: bytes) -> bool:
        """Registers `block` under `block_hash`; False (and no change) when another block already has it."""
        if block_hash in self._by_hash or block.block_hash is not None:
            return False
        block.block_hash = block_hash
        self._by_hash[block_hash] = block
        return True

    def evict(self, block: Block) -> None:
        if block.block_hash is not None:
            del self._by_hash[block.block_hash]
            block.block_hash = None

    def __len__(self) -> int:
        return len(self._by_hash)

    def items(self):
        return self._by_hash.items()


class ContentIndex:
    """Maps a block's token content (and scope salt) to the latest cached block that holds it."""

    def __init__(self):
        self._by_key: dict[ContentKey, Block] = {}

    def get(self, key: ContentKey) -> Block | None:
        return self._by_key.get(key)

    def insert(self, block: Block, key: ContentKey, position: int) -> None:
        old = self._by_key.get(key)
        if old is not None:
            old.content_key = None
        block.content_key, block.position = key, position
        block.parent_hash = block.child_hash = None
        self._by_key[key] = block

    def evict(self, block: Block) -> None:
        if block.content_key is not None:
            del self._by_key[block.content_key]
            block.content_key = None

    def items(self):
        return self._by_key.items()


class BlockPool:
    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.index = PrefixIndex()
        self.content = ContentIndex()

    @property
    def num_free(self) -> int:
        return self.free_queue.size

    def allocate(self, n: int) -> list[Block]:
        """Takes n blocks (least recently freed first), evicting their old cached prefix."""
        if n > self.free_queue.size:
            raise MemoryError(f"asked for {n} KV blocks, {self.free_queue.size} free")
        out = []
        for _ in range(n):
            block = self.free_queue.popleft()
            self.index.evict(block)
            self.content.evict(block)
            block.ref_count = 1
            out.append(block)
        return out

    def lookup(self, block_hash: bytes) -> Block | None:
        return self.index.get(block_hash) if self.enable_prefix_caching else None

    def acquire(self, blocks: Iterable[Block]) -> None:
        """Adds a reference to cached blocks found by `lookup` (reviving them from the free list)."""
        for block in blocks:
            if block.ref_count == 0:
                self.free_queue.remove(block)
            block.ref_count += 1

    def release(self, blocks: Sequence[Block]) -> None:
        """Drops one reference from each block. Pass a sequence's blocks in reverse order so that its
        tail is evicted before its (more shareable) head."""
        for block in blocks:
            if block.ref_count <= 0:
                raise AssertionError(f"double free of {block!r}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue.append(block)

    def cache_block(self, block: Block, block_hash: bytes, content_key: ContentKey | None = None,
                    position: int = 0) -> bool:
        """Registers a full, computed block in the prefix index (and, given a key, the content index);
        False if the prefix was already cached."""
        if not self.enable_prefix_caching or not self.index.insert(block, block_hash):
            return False
        if content_key is not None:
            self.content.insert(block, content_key, position)
        return True

    def lookup_content(self, key: ContentKey) -> Block | None:
        return self.content.get(key)

    def reset_prefix_cache(self) -> None:
        for block in self.blocks:
            self.index.evict(block)
            self.content.evict(block)

    def check_integrity(self) -> None:
        free_ids = [b.block_id for b in self.free_queue]
        if len(free_ids) != self.free_queue.size or len(set(free_ids)) != len(free_ids):
            raise AssertionError("free queue size or membership is corrupt")
        free = set(free_ids)
        for b in self.blocks:
            if b.ref_count < 0:
                raise AssertionError(f"{b!r} has a negative ref count")
            if (b.ref_count == 0) != (b.block_id in free):
                raise AssertionError(f"{b!r}: in free queue = {b.block_id in free}")
            if b.block_hash is not None and self.index.get(b.block_hash) is not b:
                raise AssertionError(f"{b!r} has a hash the index does not map to it")
        for h, b in self.index.items():
            if b.block_hash != h:
                raise AssertionError(f"index maps a hash to {b!r}, which has another hash")
        for key, b in self.content.items():
            if b.content_key != key or b.block_hash is None:
                raise AssertionError(f"content index maps a key to {b!r}, which has another key or no hash")
        for b in self.blocks:
            if b.content_key is not None and self.content.get(b.content_key) is not b:
                raise AssertionError(f"{b!r} has a content key the content index does not map to it")

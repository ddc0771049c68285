"""KV reuse (KVShare): reuse of cached KV beyond exact prefixes, with DHD selective recompute.

A new prompt's tokens after its exact cached prefix are matched, block_size-gram by block_size-gram
at every offset, against the content index of cached blocks (engine/block_pool.py): a hit is a run
of tokens some cached sequence computed at another position. `plan_reuse` turns the hits into a
`ReusePlan` (which of the prompt's positions copy which cached slots); spans shorter than
`min_span` tokens are dropped. `prefill` then runs the request's prefill selectively:

1. copy the reused tokens' KV into the request's own blocks, K re-rotated by (new - old) position
   (kernels/kv_copy.py), in layers >= c (the layers below are computed afresh anyway);
2. layers < c (c = check layer + 1) run on every new token, exactly as a normal prefill;
3. at the check layer, each reused token j is scored by its value deviation ‖V_fresh − V_cached‖₁;
   method `dhd` weights it by the attention α_j it receives from the prompt's tail (the tokens
   after the last reused one, computed in any case; at least the last token), which runs ahead
   through the layers after the check layer (`probe_layers`: all by default) over the copied KV
   before any selection (`Reuser._probe`). Not by the check layer's own attention: at layer 1 it
   is local and positional, and weighting by it selected worse tokens than the deviation alone
   (docs/lab/2026-11-27-kvshare-dhd.md); the tail's attention in the deeper layers is what the
   first new tokens will read.
   The top `ratio` of reused tokens, every token without a cached value, and the prompt's last
   token form the recompute set S;
4. layers ≥ c run on S only (sparse queries at their own positions over the request's whole KV);
   the other reused tokens keep their copied KV.
Method `naive` is c = 0 and ratio 0 (compute only what has no cached value); `cacheblend` scores by
value deviation alone and has no decode stage. Decode stage (`dhd` only, `drift` > 0): each decode
step the query at the last probe layer is compared with the last prompt token's attention there
over the remaining reused tokens at selection time; when their cosine similarity falls below
`drift`, the `decode_tokens` reused tokens the new query attends to most are recomputed (from their
hidden states saved at layer c) and the reference distribution is reset. The recompute rides in the
next step's forward (through the model's generic layer hook: `DecodeStageHook`), whose weight reads
it shares: on its own it would cost a decode step's worth of them; the next token reads the
refreshed KV either way. KV after the first
reused token is approximate, so such blocks never enter the prefix or content index
(`Request.exact_tokens`).

One module in two parts: `engine.reuse.plan` (the options, span matching and the `ReusePlan`; no
tensors and no model code: the scheduler imports only this) and `engine.reuse.execute` (`Reuser`:
the KV copy, DHD's probe and selection, the sparse layers and the decode stage).
"""

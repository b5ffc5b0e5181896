"""The GPT's decode step on a CPU: gsv_tts' arithmetic in fewer tensor operations.

A decode step feeds one token per row through 24 layers of small matrices, so on a CPU a good part
of it is the fixed cost of each tensor operation rather than arithmetic. gsv_tts'
`T2SBlock.decode_next_token` spends ~35 operations a layer: three transposes, two indexed cache
writes, a bool mask turned into an additive one in every layer, an attention-backend context per
layer. This step keeps its kernels and their order (same projections, same fused attention, same
layer norms), so each row's numbers are the same to the bit (tests/tts/gpt_sovits/test_decode_step.py),
with those operations done once per step or not at all. GPUs keep gsv_tts' own step.
"""

from __future__ import annotations

from typing import Any


def decode_next_token(
    transformer: Any, x: Any, k_cache: Any, v_cache: Any, lengths: Any, attn_mask: Any, rows: Any
) -> Any:
    """What `transformer.decode_next_token(x, k_cache, v_cache, lengths, attn_mask, rows)` returns,
    with the same effects: each row's new key and value written at its length, `lengths` advanced.

    x: [rows, 1, D] float32; k_cache, v_cache: [layers, rows, heads, span, head_dim];
    attn_mask: bool [rows, 1, 1, span], True where a row may attend (its new position included).
    """
    import torch
    import torch.nn.functional as F

    dtype = k_cache.dtype  # the layers' activations (bf16 when the transformer was converted to it)
    x = x.to(dtype)
    count = x.shape[0]
    blocks = transformer.blocks
    heads, head_dim, width = blocks[0].num_heads, blocks[0].head_dim, blocks[0].hidden_dim
    # The additive mask sdpa would build from the bool one in every layer, built once.
    mask = torch.zeros(attn_mask.shape, dtype=dtype, device=x.device).masked_fill_(~attn_mask, float("-inf"))
    # One row (the usual case) writes its cache by plain slicing, not an indexed scatter.
    position = int(lengths[0]) if count == 1 else None
    for block, k_layer, v_layer in zip(blocks, k_cache, v_cache):
        query, key, value = block.qkv(x).view(count, 3, heads, head_dim).unbind(1)  # each [rows, heads, head_dim]
        if position is not None:
            k_layer[0, :, position] = key[0]
            v_layer[0, :, position] = value[0]
        else:
            k_layer[rows, :, lengths] = key
            v_layer[rows, :, lengths] = value
        attended = F.scaled_dot_product_attention(query.unsqueeze(2), k_layer, v_layer, attn_mask=mask)
        x = block.norm1(x + block.out_proj(attended.view(count, 1, width)))
        x = block.norm2(x + block.mlp(x))
    lengths += 1
    return x.float()

"""open_clip's two towers as standalone torch modules: what gets exported and what runs texts.

``TextTower`` runs token ids of any length up to the context length, so a short text costs a
short sequence: open_clip's text transformer is causal and pools at the end-of-text token, so
the padding after that token never reaches the pooled feature and can be cut off unchanged.
open_clip's own ``encode_text`` adds the full 77-position mask (``CLIP``, and
``CustomTextCLIP`` without a padding mask) so it cannot run a shorter sequence; ``TextTower``
slices the positional embedding and the causal mask to the length it gets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ImageTower(nn.Module):
    """uint8 NHWC pixels -> unit-length image embeddings, input normalisation included."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.visual = model.visual
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (mean_t / std_t).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, size, size, 3) uint8 -> (n, dim) float32 unit rows."""
        x = pixels.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return _unit(self.visual(x))


class TextTower(nn.Module):
    """Token ids (n, L), any L up to the context length -> unit-length text embeddings.

    Models whose padding can matter (see ``trimmable``) get all positions, through open_clip's
    own ``encode_text``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # CustomTextCLIP keeps the text tower in model.text under the same attribute names
        self.text = getattr(model, "text", model)
        custom = self.text is not model
        self.pool_type: str | None = getattr(
            self.text, "pool_type" if custom else "text_pool_type", None
        )
        self.eos_id: int | None = getattr(self.text, "eos_id" if custom else "text_eos_id", None)
        self.trimmable = _trimmable(self.text, self.pool_type)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, L) int64 -> (n, dim) float32 unit rows."""
        if not self.trimmable:
            return _unit(self.model.encode_text(tokens))
        t = self.text
        length = tokens.shape[1]
        cast = t.transformer.get_cast_dtype()
        x = t.token_embedding(tokens).to(cast) + t.positional_embedding[:length].to(cast)
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:length, :length]))
        x = x[
            torch.arange(x.shape[0], device=x.device),
            _pool_index(tokens, self.pool_type or "argmax", self.eos_id),
        ]
        if t.text_projection is not None:
            proj = t.text_projection
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return _unit(x)

    def trim(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the padding columns after the last end-of-text token of the batch."""
        if not self.trimmable:
            return tokens
        return trim_tokens(tokens, self.pool_type, self.eos_id)  # type: ignore[arg-type]


def trim_tokens(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """``tokens`` cut after the batch's last pooled (end-of-text) position."""
    length = int(_pool_index(tokens, pool_type, eos_id).max()) + 1
    return tokens[:, :length]


def _trimmable(text: nn.Module, pool_type: str | None) -> bool:
    """Whether padding after the pooled token cannot change the result: a causal mask (so no
    position sees a later one), pooling at the end-of-text token, no token appended after the
    padding (CoCa's class token) and no padding mask to rebuild."""
    return (
        pool_type in ("argmax", "eos")
        and getattr(text, "attn_mask", None) is not None
        and getattr(text, "cls_emb", None) is None
        and not getattr(text, "use_pad_mask", False)
        and all(hasattr(text, a) for a in ("token_embedding", "positional_embedding", "ln_final"))
    )


def _pool_index(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """Where open_clip pools each row: its end-of-text token."""
    if pool_type == "eos" and eos_id is not None:
        return (tokens == eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)  # EOT has the highest id of the vocabulary


def _unit(features: torch.Tensor) -> torch.Tensor:
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` self-attention as plain ops, for export.

    The TorchScript ONNX exporter records the sequence length of ``F.multi_head_attention_forward``
    as a constant, which breaks a dynamic sequence axis; these ops keep every size symbolic.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha
        self.heads = mha.num_heads
        self.scale = (mha.embed_dim // mha.num_heads) ** -0.5

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *args: Any,
        attn_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        mha = self.mha
        if (key is not None and key is not query) or (value is not None and value is not query):
            return mha(query, key, value, *args, attn_mask=attn_mask, **kwargs)  # cross-attention
        x = query if mha.batch_first else query.transpose(0, 1)
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        out = mha.out_proj((scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2))
        return (out if mha.batch_first else out.transpose(0, 1)), None


@contextmanager
def exportable(module: nn.Module) -> Iterator[nn.Module]:
    """Swap plain self-attention modules for export-friendly ones, and back afterwards."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.MultiheadAttention)
                and child._qkv_same_embed_dim
                and child.bias_k is None
                and not child.add_zero_attn
            ):
                setattr(parent, name, _SelfAttention(child))
                swapped.append((parent, name, child))
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)

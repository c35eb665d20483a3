"""A model: a decoder backbone under the checkpoint's `model.` prefix and one head under its own
name (lm_head, v_head, score), loaded from Hugging Face-named tensors."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from tts_engine.config import ModelConfig
from tts_engine.models.attention import Attention, AttentionMetadata
from tts_engine.models.backend import get_backend
from tts_engine.models.heads import HEADS


class Model(nn.Module):
    """`forward` returns final hidden states for every token; `compute_logits` applies the head
    only to the rows asked for (the last token of each sequence, or chosen positions), which is
    where most of a small model's head FLOPs would otherwise go."""

    def __init__(self, cfg: ModelConfig, decoder: type[nn.Module], head: type[nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.model = decoder(cfg)
        self.head_name = head.name
        self.add_module(head.name, head(cfg, self.model.embed_tokens))

    @property
    def head(self) -> nn.Module:
        return getattr(self, self.head_name)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.head(hidden, **kwargs)

    def attention_layers(self) -> list[Attention]:
        """Every attention module, in layer order (the runner binds a KV cache to each)."""
        return [m for m in self.modules() if isinstance(m, Attention)]

    def set_backend(self, name: str) -> None:
        """Route attention and per-token ops through the "torch" or "triton" kernels."""
        attention_ops, elementwise_ops = get_backend(name)
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = attention_ops
            elif hasattr(m, "ops"):
                m.ops = elementwise_ops

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], check_finite: bool = True) -> None:
        """Copy Hugging Face-named tensors into the model; raise on unknown, missing or misshapen ones,
        and (check_finite) on NaN or infinite values, which a corrupt file can hold and which would
        otherwise generate garbage. Tensors of another head than ours (say the lm_head of a reward
        model's base) are skipped; a backbone saved without the `model.` prefix (AutoModel) loads too."""
        params = dict(self.named_parameters())
        other_heads = {h.name for h in HEADS} - {self.head_name}
        packed = self.model.PACKED
        loaded: set[tuple[str, int | None]] = set()
        for name, tensor in weights:
            top = name.split(".")[0]
            if "rotary_emb" in name or top in other_heads:
                continue
            if name == "lm_head.weight" and self.head_name == "lm_head" and self.head.weight is None:
                continue  # tied checkpoints sometimes store a copy of the embedding
            parts = name.split(".") if top in ("model", self.head_name) else ["model"] + name.split(".")
            shard = None
            for i, p in enumerate(parts):
                if p in packed:
                    parts[i], shard = packed[p]
            target = ".".join(parts)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {self.cfg.architecture}")
            dest = params[target].data
            if shard is not None:
                sizes = self.model.shard_sizes(parts[-2])
                dest = dest.narrow(0, sum(sizes[:shard]), sizes[shard])
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(f"shape mismatch for {name!r}: checkpoint has {tuple(tensor.shape)}, "
                                 f"the config implies {tuple(dest.shape)}")
            dest.copy_(tensor)
            if check_finite and dest.is_floating_point() and not bool(torch.isfinite(dest).all()):
                raise ValueError(f"checkpoint tensor {name!r} holds NaN or infinite values (a corrupt "
                                 f"file?); "
                                 f"check_weights=False loads it anyway")
            loaded.add((target, shard))
        missing = []
        for target in params:
            group = target.split(".")[-2]
            shards = (
                range(len(self.model.shard_sizes(group))) if group in ("qkv_proj", "gate_up_proj") else [None]
            )
            missing += [
                f"{target}[{s}]" if s is not None else target for s in shards if (target, s) not in loaded
            ]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:4])}")

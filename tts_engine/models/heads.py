"""Heads: what a model computes from final hidden states, at the rows asked for only (the last
token of each sampling sequence, or a PRM's step-tag positions). Each head is stored in the
model under the name its checkpoints use, so its tensors load by their own names:

- `lm_head`: the causal LM head, [vocab] logits (tied to the embedding when the config says so);
- `v_head`: a value head, one scalar (Skywork's PRM: `v_head.summary`);
- `score`: a token-classification head, Linear-ReLU-Linear to `num_labels` (Qwen2.5-Math-PRM:
  `score.0`, `score.2`).
Heads return float32. Each head also names a tensor its checkpoints hold (how a checkpoint's
head is recognised; a tied LM head has none) and counts its own FLOPs (2 per multiply-add).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tts_engine.config import ModelConfig
from tts_engine.models.layers import Linear, param


class LMHead(nn.Module):
    name = "lm_head"
    tensor = "lm_head.weight"

    @staticmethod
    def flops(cfg: ModelConfig, rows: int, columns: int | None = None) -> int:
        """The head on `rows` hidden states, of the whole vocabulary or of `columns` token ids."""
        return 2 * cfg.hidden_size * (cfg.vocab_size if columns is None else columns) * rows

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.weight = None if cfg.tie_word_embeddings else param(cfg.vocab_size, cfg.hidden_size)
        self._embedding = (embedding,)   # a tuple: the tied embedding stays a parameter of the decoder only

    def forward(self, hidden: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [rows, vocab], or [rows, len(columns)] of only those token ids (a PRM that reads
        two of them need not compute the whole vocabulary)."""
        weight = self._embedding[0].weight if self.weight is None else self.weight
        if columns is not None:
            weight = weight[columns]
        return F.linear(hidden, weight).float()


class ValueHead(nn.Module):
    name = "v_head"
    tensor = "v_head.summary.weight"

    @staticmethod
    def flops(cfg: ModelConfig, rows: int, columns: None = None) -> int:
        return 2 * cfg.hidden_size * rows

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.summary = Linear(cfg.hidden_size, 1, True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, 1] values (before any sigmoid)."""
        return self.summary(hidden).float()


class ClassificationHead(nn.Module):
    name = "score"
    tensor = "score.0.weight"

    @staticmethod
    def flops(cfg: ModelConfig, rows: int, columns: None = None) -> int:
        h = cfg.hidden_size
        return 2 * (h * h + h * cfg.num_labels) * rows

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        # indices as in nn.Sequential(Linear, ReLU, Linear), which names the tensors score.0 / score.2
        self.add_module("0", Linear(cfg.hidden_size, cfg.hidden_size, True))
        self.add_module("2", Linear(cfg.hidden_size, cfg.num_labels, True))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, num_labels] logits."""
        first, second = self._modules["0"], self._modules["2"]
        return second(F.relu(first(hidden))).float()


HEADS = (LMHead, ValueHead, ClassificationHead)

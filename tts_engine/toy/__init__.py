"""The toy world: step-checkable chain arithmetic, and the small and large policies and PRM that the
project trained on it and ships (tts_engine/toy/models), so that `python -m tts_engine.run` with no
model arguments runs a compute-optimal test-time scaling study in minutes on any CPU."""
from __future__ import annotations

import os

MODELS = os.path.join(os.path.dirname(__file__), "models")
SMALL, LARGE, PRM = "toy-llama-small", "toy-qwen-large", "toy-prm"


def model_path(name: str) -> str:
    """The folder of a shipped toy model (SMALL, LARGE or PRM)."""
    return os.path.join(MODELS, name)

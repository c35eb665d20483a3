"""tts-engine: a small, fast inference engine for test-time scaling research."""
from tts_engine.engine.llm import LLM
from tts_engine.outputs import CompletionOutput, RequestOutput
from tts_engine.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"

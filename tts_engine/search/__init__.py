"""Test-time search strategies over an LLM policy and a PRM, batched across problems:
CoT, best-of-N, beam search and DVTS, with the paper's aggregation rules."""
from tts_engine.search.adaptive import bon_adaptive, dvts_adaptive
from tts_engine.search.aggregate import RULES, choose
from tts_engine.search.beam_search import beam_search, beam_vg, dvts
from tts_engine.search.best_of_n import best_of_n, cot
from tts_engine.search.common import Candidate, ProblemResult, SearchConfig

METHODS = {"cot": cot, "bon": best_of_n, "beam": beam_search, "dvts": dvts, "bon-adaptive": bon_adaptive,
           "dvts-adaptive": dvts_adaptive, "beam-vg": beam_vg}

__all__ = ["RULES", "METHODS", "Candidate", "ProblemResult", "SearchConfig", "choose", "cot", "best_of_n",
           "beam_search", "beam_vg", "dvts", "bon_adaptive", "dvts_adaptive"]

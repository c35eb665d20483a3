"""Test-time search strategies over an LLM policy and a PRM, batched across problems:
CoT, best-of-N, beam search and DVTS, with the paper's aggregation rules."""
from tts_engine.search.aggregate import RULES, choose
from tts_engine.search.beam_search import beam_search, dvts
from tts_engine.search.best_of_n import best_of_n, cot
from tts_engine.search.common import Candidate, ProblemResult, SearchConfig

METHODS = {"cot": cot, "bon": best_of_n, "beam": beam_search, "dvts": dvts}

__all__ = ["RULES", "METHODS", "Candidate", "ProblemResult", "SearchConfig", "choose", "cot", "best_of_n",
           "beam_search", "dvts"]

"""Datasets, policy prompts, answer extraction and grading."""
from tts_engine.tasks.data import Problem, load_dataset
from tts_engine.tasks.grading import extract_answer, grade, same_answer

__all__ = ["Problem", "load_dataset", "extract_answer", "grade", "same_answer"]

"""DRPO: tuning-free self-alignment by system-prompt and in-context-example search with dynamic rewarding.

See docs/drpo.md. Modules: state (immutable search data), llm (backends, cache, accounting), local (jaxlm model
backend), reward (dynamic rewarding), icl (stage 1), search (stage 2 beam search), embed (ICL retrieval),
evaluate (just-eval-style harness), prompts (meta-prompts and data files).
"""

from jaxlm.align.llm import (LLM, Cached, Completion, HTTPLLM, Ledger, LLMError, Metered, ResponseCache,
                             ScriptedLLM)
from jaxlm.align.state import (AspectScore, AspectSelection, Evaluation, Example, ICLRecord, LevelResult, Node,
                               SearchState)

__all__ = ["LLM", "Cached", "Completion", "HTTPLLM", "Ledger", "LLMError", "Metered", "ResponseCache", "ScriptedLLM",
           "AspectScore", "AspectSelection", "Evaluation", "Example", "ICLRecord", "LevelResult", "Node",
           "SearchState"]

"""Tokenizers for pretraining data: the one interface lives in jaxlm.io.tokenizer (re-exported here).

The data pipeline uses `as_tokenizer(x)`: document mode, where special-token text inside a document is plain text
and encoding never adds BOS/EOS (LLM360 packing adds EOS between documents itself).
"""

from jaxlm.io.tokenizer import (FIM_TOKENS, FimIds, GenericTokenizer, HFTokenizer,  # noqa: F401
                                SentencePieceTokenizer, Tokenizer, as_tokenizer, load_tokenizer)

__all__ = ["FIM_TOKENS", "FimIds", "Tokenizer", "HFTokenizer", "SentencePieceTokenizer", "GenericTokenizer",
           "as_tokenizer", "load_tokenizer"]

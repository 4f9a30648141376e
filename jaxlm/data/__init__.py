"""Pretraining data: sources, tokenizers, LLM360 packing, FIM, phased mixtures, a deterministic grain pipeline.

    from jaxlm.data import DataConfig, PhaseSpec, build_pipeline, embedded_corpus, default_tokenizer
    tok = default_tokenizer()
    cfg = DataConfig(seq_len=128, global_batch=16, seed=0, sources=embedded_corpus(),
                     phases=(PhaseSpec(steps=100, weights={"language": 1.0}),))
    pipe = build_pipeline(cfg, tok)
    batch = pipe.next()   # inputs/targets int32 [16, 128], source_id int32 [16], step

See docs/data.md.
"""

from jaxlm.data.corpus import default_tokenizer, embedded_corpus, train_bpe
from jaxlm.data.fim import FimPlan, apply_fim, reassemble
from jaxlm.data.mixture import Mixture, PhaseSpec
from jaxlm.data.pack import PackedStream, TokenStore, inputs_targets, pack
from jaxlm.data.pipeline import (DataConfig, Pipeline, build_eval_batches, build_pipeline, tokenize_documents)
from jaxlm.data.sources import DataError, DataFileNotFoundError, Documents, SourceSpec, open_source
from jaxlm.data.tokenizer import FIM_TOKENS, FimIds, Tokenizer, as_tokenizer, load_tokenizer
from jaxlm.data.windows import RandomWindowPipeline, tokenize_texts, topics_split, window_eval_batches

__all__ = [
    "DataConfig", "PhaseSpec", "SourceSpec", "Pipeline", "build_pipeline", "build_eval_batches", "embedded_corpus",
    "default_tokenizer", "train_bpe", "load_tokenizer", "as_tokenizer", "Tokenizer", "FimIds", "FIM_TOKENS",
    "apply_fim", "reassemble", "FimPlan", "Mixture", "pack", "inputs_targets", "PackedStream", "TokenStore",
    "tokenize_documents", "open_source", "Documents", "DataError", "DataFileNotFoundError",
    "RandomWindowPipeline", "tokenize_texts", "topics_split", "window_eval_batches",
]

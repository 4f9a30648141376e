"""Fill-in-the-middle (FIM) for code documents, as in StarCoder / CrystalCoder data preparation.

With probability `rate` a document is cut at two character positions drawn uniformly from [0, len(text)] (sorted;
a piece may be empty) into prefix / middle / suffix; each piece is tokenized separately and reassembled as

    PSM: <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle
    SPM: <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle      (with probability `spm_rate`)

The transform is applied per document before packing (the EOS separator follows the whole FIM document). It is
invertible: `reassemble` turns a transformed document back into the original text.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxlm.data.tokenizer import FimIds, Tokenizer
from jaxlm.errors import ConfigError


@dataclasses.dataclass
class FimPlan:
    """Per-document decisions for one pass over a source."""

    apply: np.ndarray  # bool [n]
    spm: np.ndarray  # bool [n] (meaningful where apply)
    cuts: np.ndarray  # int64 [n, 2], sorted character positions


def plan(char_lengths: np.ndarray, rate: float, spm_rate: float, rng: np.random.Generator) -> FimPlan:
    """Draw every document's FIM decision, format and split points (vectorized, deterministic for an rng)."""
    n = len(char_lengths)
    apply = rng.random(n) < rate
    spm = rng.random(n) < spm_rate
    cuts = np.sort(rng.integers(0, np.asarray(char_lengths, dtype=np.int64) + 1, size=(2, n)).T, axis=1)
    return FimPlan(apply, spm, cuts)


def split(text: str, cuts) -> tuple[str, str, str]:
    a, b = int(cuts[0]), int(cuts[1])
    return text[:a], text[a:b], text[b:]


def assemble(prefix: np.ndarray, middle: np.ndarray, suffix: np.ndarray, fim: FimIds, spm: bool) -> np.ndarray:
    if spm:
        parts = [[fim.prefix, fim.suffix], suffix, [fim.middle], prefix, middle]
    else:
        parts = [[fim.prefix], prefix, [fim.suffix], suffix, [fim.middle], middle]
    return np.concatenate([np.asarray(p, dtype=np.int32) for p in parts])


def transform(texts: Sequence[str], p: FimPlan, tokenizer: Tokenizer, fim: FimIds) -> dict[int, np.ndarray]:
    """Token ids of the documents that `p` selects for FIM: {doc index: ids}. Pieces are tokenized in one batch."""
    idx = np.flatnonzero(p.apply)
    pieces: list[str] = []
    for i in idx:
        pieces.extend(split(texts[i], p.cuts[i]))
    enc = tokenizer.encode_batch(pieces) if pieces else []
    return {int(i): assemble(enc[3 * k], enc[3 * k + 1], enc[3 * k + 2], fim, bool(p.spm[i]))
            for k, i in enumerate(idx)}


def apply_fim(text: str, tokenizer: Tokenizer, rng: np.random.Generator, rate: float = 0.5,
              spm_rate: float = 0.5, fim: FimIds | None = None) -> np.ndarray:
    """One document -> token ids (FIM-transformed with probability `rate`)."""
    fim = fim or require_fim(tokenizer)
    p = plan(np.array([len(text)]), rate, spm_rate, rng)
    out = transform([text], p, tokenizer, fim)
    return out.get(0, np.asarray(tokenizer.encode(text), dtype=np.int32))


def reassemble(ids: Sequence[int], tokenizer: Tokenizer, fim: FimIds | None = None) -> str:
    """Inverse of the transform: PSM/SPM token ids (or a plain document) -> the original text."""
    fim = fim or require_fim(tokenizer)
    ids = [int(i) for i in ids]
    if not ids or ids[0] != fim.prefix:
        return tokenizer.decode(ids)
    if len(ids) > 1 and ids[1] == fim.suffix:  # SPM: P S suffix M prefix+middle
        m = ids.index(fim.middle, 2)
        return tokenizer.decode(ids[m + 1:]) + tokenizer.decode(ids[2:m])
    s = ids.index(fim.suffix, 1)  # PSM: P prefix S suffix M middle
    m = ids.index(fim.middle, s + 1)
    return tokenizer.decode(ids[1:s]) + tokenizer.decode(ids[m + 1:]) + tokenizer.decode(ids[s + 1:m])


def require_fim(tokenizer: Tokenizer, where: str = "tokenizer") -> FimIds:
    fim = tokenizer.fim
    if fim is None:
        raise ConfigError(f"{where}: FIM needs the special tokens <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|> "
                         f"(or <fim_prefix>/...), which {tokenizer.name} lacks")
    return fim

"""Tokenizers for pretraining data: HF `tokenizers` (tokenizer.json), SentencePiece (tokenizer.model), or the
tokenizer embedded in a GGUF file (via jaxlm.io.tokenizer).

All share one small interface: `vocab_size`, `eos_id`, `bos_id`, `encode(str) -> list[int]`,
`encode_batch(list[str]) -> list[np.ndarray]`, `decode(ids) -> str`, `token_to_id(str)`, `fim` (the FIM special
ids or None) and `fingerprint` (a hash of the vocabulary, keys the token caches). Encoding never adds BOS/EOS
(LLM360 packing adds EOS between documents itself) and treats special-token text inside a document as plain text,
so raw data can never inject control tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxlm.data.sources import DataError, DataFileNotFoundError, cache_dir

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>")
_FIM_SPELLINGS = (FIM_TOKENS, ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"),
                  ("<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"))
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


@dataclasses.dataclass(frozen=True)
class FimIds:
    prefix: int
    middle: int
    suffix: int
    pad: int | None = None


class Tokenizer:
    """Common interface; see the module docstring."""

    name: str = "tokenizer"
    vocab_size: int
    eos_id: int
    bos_id: int | None = None
    fingerprint: str | None = None  # None: do not cache token ids on disk

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.encode_batch([text])[0]]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    @property
    def fim(self) -> FimIds | None:
        for names in _FIM_SPELLINGS:
            ids = [self.token_to_id(t) for t in names]
            if all(i is not None for i in ids[:3]):
                return FimIds(*ids)
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (tokenizer.json)."""

    def __init__(self, tk, *, eos_id: int, bos_id: int | None = None, name: str = "tokenizer.json"):
        from tokenizers import Tokenizer as _Tk

        raw = tk.to_str()
        self.tk = _Tk.from_str(raw)  # private copy: the caller's object is not modified
        self.tk.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a control token
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)
        self.eos_id, self.bos_id, self.name = int(eos_id), bos_id, name
        self.fingerprint = hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()

    def encode_batch(self, texts):
        fn = getattr(self.tk, "encode_batch_fast", None) or self.tk.encode_batch
        return [np.asarray(e.ids, dtype=np.int32) for e in fn(list(texts), add_special_tokens=False)]

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token):
        return self.tk.token_to_id(token)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (tokenizer.model, e.g. LLaMA's)."""

    def __init__(self, path, *, eos_id: int | None = None):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.name = str(path)
        self.vocab_size = self.sp.get_piece_size()
        eos = self.sp.eos_id() if eos_id is None else eos_id
        if eos is None or eos < 0:
            raise DataError(f"{path}: SentencePiece model has no EOS piece; pass eos_token=")
        self.eos_id = int(eos)
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.fingerprint = hashlib.blake2b(self.sp.serialized_model_proto(), digest_size=16).hexdigest()

    def encode_batch(self, texts):
        return [np.asarray(ids, dtype=np.int32) for ids in self.sp.encode(list(texts))]

    def encode(self, text):
        return list(self.sp.encode(text))

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    def token_to_id(self, token):
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else int(i)


class GenericTokenizer(Tokenizer):
    """Any object with encode/decode/eos_id (token ids are not cached on disk: no reliable fingerprint)."""

    def __init__(self, obj):
        self.obj = obj
        self.name = type(obj).__name__
        self.eos_id = int(obj.eos_id)
        self.bos_id = getattr(obj, "bos_id", None)
        self.vocab_size = int(obj.vocab_size)

    def encode_batch(self, texts):
        return [np.asarray(self.obj.encode(t), dtype=np.int32) for t in texts]

    def decode(self, ids):
        return self.obj.decode([int(i) for i in ids])

    def token_to_id(self, token):
        f = getattr(self.obj, "token_to_id", None)
        return f(token) if f else None


def _eos_from_config(path: Path, tk, eos_token: str | None) -> tuple[int, int | None]:
    conf = {}
    cfg = path.parent / "tokenizer_config.json"
    if cfg.exists():
        conf = json.loads(cfg.read_text())

    def tid(v):
        if isinstance(v, dict):
            v = v.get("content")
        return tk.token_to_id(v) if isinstance(v, str) else None

    bos = tid(conf.get("bos_token"))
    if eos_token is not None:
        eos = tk.token_to_id(eos_token)
        if eos is None:
            raise DataError(f"{path}: eos_token {eos_token!r} is not in the vocabulary")
        return eos, bos
    eos = tid(conf.get("eos_token"))
    for cand in _EOS_CANDIDATES:
        if eos is not None:
            break
        eos = tk.token_to_id(cand)
    if eos is None:
        raise DataError(f"{path}: cannot tell the EOS token (no tokenizer_config.json eos_token and none of "
                        f"{_EOS_CANDIDATES} in the vocabulary); pass eos_token=")
    return eos, bos


def _gguf_tok(p: Path):
    """The tokenizer embedded in a GGUF (jaxlm.io.tokenizer.Tok), cached as tokenizer.json under
    $JAXLM_CACHE/data: opening a GGUF takes seconds, the cached copy milliseconds."""
    from jaxlm.io.tokenizer import Tok

    st = p.stat()
    key = hashlib.blake2b(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=12).hexdigest()
    d = Path(cache_dir()) / f"gguf-tokenizer-{key}"
    if (d / "tokenizer.json").exists():
        return Tok.from_dir(d)
    import gguf

    from jaxlm.io.gguf import read_gguf_metadata

    tok = Tok.from_gguf_fields(read_gguf_metadata(gguf.GGUFReader(str(p))), source=str(p))
    tmp = d.with_name(f"{d.name}.{os.getpid()}.tmp")
    tok.save(tmp)
    try:
        os.replace(tmp, d)
    except OSError:  # another process won the race
        pass
    return Tok.from_dir(d)


def load_tokenizer(path, *, eos_token: str | None = None) -> Tokenizer:
    """Load a tokenizer from tokenizer.json, tokenizer.model, a directory holding one, or a .gguf file."""
    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (p / name).exists():
                p = p / name
                break
        else:
            raise DataFileNotFoundError(f"{path}: directory has no tokenizer.json or tokenizer.model")
    if not p.exists():
        raise DataFileNotFoundError(f"tokenizer file not found: {p}")
    if p.suffix == ".gguf":
        return as_tokenizer(_gguf_tok(p), name=str(p), eos_token=eos_token)
    if p.suffix == ".model":
        eos = None
        if eos_token is not None:
            import sentencepiece as spm

            eos = spm.SentencePieceProcessor(model_file=str(p)).piece_to_id(eos_token)
        return SentencePieceTokenizer(p, eos_id=eos)
    from tokenizers import Tokenizer as _Tk

    try:
        tk = _Tk.from_file(str(p))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for bad JSON
        raise DataError(f"{p}: not a valid tokenizer.json ({e})") from None
    eos, bos = _eos_from_config(p, tk, eos_token)
    return HFTokenizer(tk, eos_id=eos, bos_id=bos, name=str(p))


def as_tokenizer(obj, *, name: str | None = None, eos_token: str | None = None) -> Tokenizer:
    """Wrap what a user may hold: our Tokenizer, a path, a `tokenizers.Tokenizer`, jaxlm.io.tokenizer.Tok,
    a SentencePieceProcessor-backed object, or anything with encode/decode/eos_id/vocab_size."""
    if isinstance(obj, Tokenizer):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_tokenizer(obj, eos_token=eos_token)
    from tokenizers import Tokenizer as _Tk

    if isinstance(obj, _Tk):
        eos = obj.token_to_id(eos_token) if eos_token else next(
            (obj.token_to_id(c) for c in _EOS_CANDIDATES if obj.token_to_id(c) is not None), None)
        if eos is None:
            raise DataError("tokenizers.Tokenizer: cannot tell the EOS token; pass eos_token=")
        return HFTokenizer(obj, eos_id=eos, name=name or "tokenizers.Tokenizer")
    inner = getattr(obj, "tk", None)  # jaxlm.io.tokenizer.Tok
    if isinstance(inner, _Tk):
        eos = inner.token_to_id(eos_token) if eos_token else getattr(obj, "eos_id", None)
        if eos is None:
            raise DataError(f"{name or type(obj).__name__}: tokenizer has no EOS id; pass eos_token=")
        return HFTokenizer(inner, eos_id=eos, bos_id=getattr(obj, "bos_id", None), name=name or type(obj).__name__)
    if all(hasattr(obj, a) for a in ("encode", "decode", "eos_id", "vocab_size")):
        return GenericTokenizer(obj)
    raise DataError(f"cannot use {type(obj).__name__} as a tokenizer (needs encode, decode, eos_id, vocab_size)")

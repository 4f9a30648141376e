"""The one tokenizer interface of jaxlm, and the one `load_tokenizer(path)`.

Every tokenizer is a `Tokenizer` with

    vocab_size, bos_id, eos_id, pad_id (ints or None), chat_template (str or None), name, fingerprint, parse_special
    encode(text, add_bos=None) -> list[int]          encode_batch(texts) -> list[np.ndarray int32]
    decode(ids, skip_special_tokens=None) -> str      token_to_id(str) / id_to_token(int) -> int / str or None
    fim -> FimIds or None                             apply_chat_template(messages, add_generation_prompt=True)
    save(dir)                                         for_documents() -> the document-mode view (below)

Backends: `HFTokenizer` (a `tokenizers.Tokenizer`: tokenizer.json, or the vocabulary embedded in a GGUF file),
`SentencePieceTokenizer` (tokenizer.model), `ByteTokenizer` (bytes <-> ids 0..255, for the tiny test models) and
`GenericTokenizer` (any object with encode / decode / eos_id / vocab_size).

Special tokens. `parse_special=True` (what `load_tokenizer` returns: a model's tokenizer) turns special-token text
such as "<|im_end|>" inside the input into the control token, as chat templates need, and `decode` drops special
tokens. `parse_special=False` (document mode: the data pipeline, through `as_tokenizer`) treats such text as plain
text, so raw data can never inject control tokens, and `decode` keeps every token, so decode(encode(d)) == d.
Encoding never adds EOS (LLM360 packing adds it between documents) and adds BOS only when the tokenizer's config
says so (`add_bos_token`), never in document mode. `fingerprint` hashes the vocabulary (it keys the token caches).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxlm.errors import CheckpointError, ConfigError, DataError, DataFileNotFoundError

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>")
_FIM_SPELLINGS = (FIM_TOKENS, ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"),
                  ("<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"))
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")
BYTES_CLASS = "jaxlm-bytes"  # tokenizer_config.json "tokenizer_class" of a saved ByteTokenizer


@dataclasses.dataclass(frozen=True)
class FimIds:
    prefix: int
    middle: int
    suffix: int
    pad: int | None = None


class Tokenizer:
    """The common interface and its shared behaviour (see the module docstring); backends subclass it."""

    name: str = "tokenizer"
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    chat_template: str | None = None
    add_bos: bool = False
    parse_special: bool = False

    # ---- backend hooks
    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool | None = None) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, i: int) -> str | None:
        return None

    @property
    def fingerprint(self) -> str | None:  # None: token ids are not cached on disk
        return None

    # ---- shared
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = [int(i) for i in self._encode(text)]
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None and self.parse_special:
            ids = [int(self.bos_id)] + ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(self.encode(t), dtype=np.int32) for t in texts]

    def token(self, i: int) -> str | None:
        return self.id_to_token(i)

    @property
    def fim(self) -> FimIds | None:
        for names in _FIM_SPELLINGS:
            ids = [self.token_to_id(t) for t in names]
            if all(i is not None for i in ids[:3]):
                return FimIds(*ids)
        return None

    def for_documents(self) -> "Tokenizer":
        """This tokenizer in document mode (parse_special=False); it must know its EOS id (packing needs it)."""
        if self.eos_id is None:
            raise DataError(f"{self.name}: tokenizer has no EOS id (documents are joined by EOS); pass eos_token=")
        if not self.parse_special:
            return self
        out = copy.copy(self)
        out.parse_special = False
        out._mode_changed()
        return out

    def _mode_changed(self) -> None:
        pass

    def _skip(self, skip_special_tokens):
        return self.parse_special if skip_special_tokens is None else bool(skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kw) -> str:
        if not self.chat_template:
            raise ConfigError(f"{self.name}: this tokenizer has no chat template (tokenizer_config.json "
                              f"'chat_template')")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise TemplateError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        tok = lambda i: self.id_to_token(i) if i is not None else None  # noqa: E731
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=tok(self.bos_id) or "", eos_token=tok(self.eos_id) or "", **kw)

    def _config(self) -> dict:
        conf = {"add_bos_token": self.add_bos, "clean_up_tokenization_spaces": False}
        for key, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)):
            if i is not None and self.id_to_token(i) is not None:
                conf[key] = self.id_to_token(i)
        if self.chat_template:
            conf["chat_template"] = self.chat_template
        return conf

    def save(self, out_dir) -> Path:
        raise ConfigError(f"{type(self).__name__} ({self.name}) cannot be saved")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _write_config(out: Path, conf: dict) -> None:
    (out / "tokenizer_config.json").write_text(json.dumps(conf, indent=2))


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (tokenizer.json). The caller's object is copied (never modified) unless copy=False.
    The constructor's default is document mode (parse_special=False); the loaders pass parse_special=True."""

    def __init__(self, tk, *, eos_id: int | None = None, bos_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None, add_bos: bool = False, name: str = "tokenizer.json",
                 parse_special: bool = False, copy: bool = True):
        from tokenizers import Tokenizer as _Tk

        self.tk = _Tk.from_str(tk.to_str()) if copy else tk
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.chat_template, self.add_bos, self.name = chat_template, bool(add_bos), name
        self.parse_special = bool(parse_special)
        self.tk.encode_special_tokens = not self.parse_special
        self._fp = None

    def _mode_changed(self):  # for_documents' copy gets a private backend (the original keeps its setting)
        from tokenizers import Tokenizer as _Tk

        raw = self.tk.to_str()
        self._fp = self._fp or hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
        self.tk = _Tk.from_str(raw)
        self.tk.encode_special_tokens = not self.parse_special

    @property
    def fingerprint(self):
        if self._fp is None:
            self._fp = hashlib.blake2b(self.tk.to_str().encode(), digest_size=16).hexdigest()
        return self._fp

    def _encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        if self.add_bos and self.parse_special:
            return super().encode_batch(texts)
        fn = getattr(self.tk, "encode_batch_fast", None) or self.tk.encode_batch
        return [np.asarray(e.ids, dtype=np.int32) for e in fn(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens=None):
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=self._skip(skip_special_tokens))

    def token_to_id(self, token):
        return self.tk.token_to_id(token)

    def id_to_token(self, i):
        return self.tk.id_to_token(int(i))

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tk.save(str(out / "tokenizer.json"))
        _write_config(out, {"tokenizer_class": "PreTrainedTokenizerFast", **self._config()})
        return out

    # ---- constructors (parse_special=True: a model's tokenizer)
    @classmethod
    def from_file(cls, path, *, eos_token: str | None = None, parse_special: bool = True) -> "HFTokenizer":
        """tokenizer.json (a directory holding one), with bos/eos/pad/chat template from tokenizer_config.json."""
        from tokenizers import Tokenizer as _Tk

        p = Path(path)
        f = p / "tokenizer.json" if p.is_dir() else p
        if not f.exists():
            raise DataFileNotFoundError(f"tokenizer file not found: {f}")
        try:
            tk = _Tk.from_file(str(f))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for bad JSON
            raise DataError(f"{f}: not a valid tokenizer.json ({e})") from None
        conf = _read_config(f.parent)
        ids = _special_ids(conf, tk.token_to_id, eos_token, str(f))
        return cls(tk, **ids, chat_template=conf.get("chat_template"), add_bos=bool(conf.get("add_bos_token", False)),
                   name=str(f), parse_special=parse_special, copy=False)

    from_dir = from_file  # the name jaxlm.io.tokenizer.Tok used

    @classmethod
    def from_gguf_fields(cls, meta: dict, source: str = "gguf") -> "HFTokenizer":
        """The byte-level BPE ('gpt2') tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata."""
        from tokenizers import AddedToken, Tokenizer as _Tk, decoders, models, pre_tokenizers

        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise CheckpointError(f"{source}: tokenizer.ggml.model={model!r}: only byte-level BPE ('gpt2') is "
                                  f"supported")
        tokens = meta["tokenizer.ggml.tokens"]
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tk = _Tk(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                            byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
                                              use_regex=True)
        if meta.get("tokenizer.ggml.pre") == "smollm":  # SmolLM's tokenizer splits digits one by one first
            tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            tk.pre_tokenizer = byte_level
        tk.decoder = decoders.ByteLevel()
        # control (3) and user-defined (4) tokens are matched whole, before BPE
        control = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3]
        user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == 4]
        if control:
            tk.add_special_tokens(control)
        if user:
            tk.add_tokens(user)
        return cls(tk, bos_id=meta.get("tokenizer.ggml.bos_token_id"), eos_id=meta.get("tokenizer.ggml.eos_token_id"),
                   pad_id=meta.get("tokenizer.ggml.padding_token_id"),
                   chat_template=meta.get("tokenizer.chat_template"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)), name=source, parse_special=True,
                   copy=False)


Tok = HFTokenizer  # the old name (jaxlm.io.tokenizer.Tok)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (tokenizer.model, e.g. LLaMA's); tokenizer_config.json beside it is read when present."""

    def __init__(self, path, *, eos_id: int | None = None, parse_special: bool = True):
        import sentencepiece as spm

        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.name = str(path)
        self.vocab_size = self.sp.get_piece_size()
        eos = self.sp.eos_id() if eos_id is None else eos_id
        self.eos_id = int(eos) if eos is not None and eos >= 0 else None
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id
        conf = _read_config(self.path.parent)
        self.chat_template, self.add_bos = conf.get("chat_template"), bool(conf.get("add_bos_token", False))
        self.parse_special = parse_special
        self._fp = hashlib.blake2b(self.sp.serialized_model_proto(), digest_size=16).hexdigest()

    @property
    def fingerprint(self):
        return self._fp

    def _encode(self, text):
        return self.sp.encode(text)

    def encode_batch(self, texts):
        if self.add_bos and self.parse_special:
            return super().encode_batch(texts)
        return [np.asarray(ids, dtype=np.int32) for ids in self.sp.encode(list(texts))]

    def decode(self, ids, skip_special_tokens=None):
        return self.sp.decode([int(i) for i in ids])

    def token_to_id(self, token):
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else int(i)

    def id_to_token(self, i):
        return self.sp.id_to_piece(int(i)) if 0 <= int(i) < self.vocab_size else None

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        _write_config(out, {"tokenizer_class": "LlamaTokenizer", **self._config()})
        return out


class ByteTokenizer(Tokenizer):
    """Bytes <-> ids 0..255 (UTF-8). For the tiny 256-token test models: no special tokens, no template."""

    vocab_size = 256
    name = "bytes"
    parse_special = True

    def _encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=None):
        return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")

    def token_to_id(self, token):
        b = token.encode("utf-8")
        return b[0] if len(b) == 1 else None

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, {"tokenizer_class": BYTES_CLASS})
        return out


class GenericTokenizer(Tokenizer):
    """Any object with encode / decode / eos_id / vocab_size (no fingerprint: its token ids are not cached)."""

    def __init__(self, obj):
        self.obj = obj
        self.name = type(obj).__name__
        self.eos_id = None if getattr(obj, "eos_id", None) is None else int(obj.eos_id)
        self.bos_id = getattr(obj, "bos_id", None)
        self.pad_id = getattr(obj, "pad_id", self.eos_id)
        self.chat_template = getattr(obj, "chat_template", None)
        self.vocab_size = int(obj.vocab_size)

    def _encode(self, text):
        return self.obj.encode(text)

    def decode(self, ids, skip_special_tokens=None):
        return self.obj.decode([int(i) for i in ids])

    def token_to_id(self, token):
        f = getattr(self.obj, "token_to_id", None)
        return f(token) if f else None

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, **kw):
        f = getattr(self.obj, "apply_chat_template", None)
        if f is None:
            return super().apply_chat_template(messages, add_generation_prompt, **kw)
        return f(messages, add_generation_prompt=add_generation_prompt, **kw)


# ---------------------------------------------------------------------------------------------- helpers
def _read_config(d: Path) -> dict:
    f = d / "tokenizer_config.json"
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{f}: invalid JSON ({e})") from None


def _special_ids(conf: dict, to_id, eos_token: str | None, source: str) -> dict:
    """bos/eos/pad ids from tokenizer_config.json; an explicit eos_token wins; else a well-known EOS spelling."""
    def tid(v):
        if isinstance(v, dict):
            v = v.get("content")
        return to_id(v) if isinstance(v, str) and v else None

    if eos_token is not None:
        eos = to_id(eos_token)
        if eos is None:
            raise DataError(f"{source}: eos_token {eos_token!r} is not in the vocabulary")
    else:
        eos = tid(conf.get("eos_token"))
        for cand in _EOS_CANDIDATES:
            if eos is not None:
                break
            eos = to_id(cand)
    return {"bos_id": tid(conf.get("bos_token")), "eos_id": eos, "pad_id": tid(conf.get("pad_token"))}


def read_gguf_metadata(reader) -> dict:
    """{key: value} of a `gguf.GGUFReader`'s fields (values the reader cannot decode are None)."""
    def value(f):
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - very old gguf readers
            return None

    return {k: value(f) for k, f in reader.fields.items()}


def _gguf_tokenizer(p: Path) -> HFTokenizer:
    """The tokenizer embedded in a GGUF, cached as tokenizer.json under $JAXLM_CACHE/data (opening a GGUF takes
    seconds, the cached copy milliseconds)."""
    st = p.stat()
    key = hashlib.blake2b(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=12).hexdigest()
    root = Path(os.environ.get("JAXLM_CACHE") or Path.home() / ".cache" / "jaxlm") / "data"
    d = root / f"gguf-tokenizer-{key}"
    if not (d / "tokenizer.json").exists():
        import gguf

        try:
            reader = gguf.GGUFReader(str(p))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{p}: not a readable GGUF file ({e})") from None
        tok = HFTokenizer.from_gguf_fields(read_gguf_metadata(reader), source=str(p))
        tmp = d.with_name(f"{d.name}.{os.getpid()}.tmp")
        tok.save(tmp)
        try:
            os.replace(tmp, d)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return HFTokenizer.from_file(d)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def has_tokenizer(d) -> bool:
    """Whether directory `d` holds a tokenizer `load_tokenizer` reads."""
    d = Path(d)
    return any((d / n).exists() for n in TOKENIZER_FILES) or _read_config(d).get("tokenizer_class") == BYTES_CLASS


def load_tokenizer(path, *, eos_token: str | None = None, missing_ok: bool = False) -> Tokenizer | None:
    """THE tokenizer loader: tokenizer.json, tokenizer.model (SentencePiece), a .gguf file, or a directory holding
    one of them (or a saved ByteTokenizer). Returns a model's tokenizer (parse_special=True); the data pipeline
    uses its `for_documents()` view. eos_token overrides the EOS. missing_ok: a directory without a tokenizer gives
    None instead of DataFileNotFoundError."""
    p = Path(path)
    if p.is_dir():
        if not has_tokenizer(p):
            if missing_ok:
                return None
            raise DataFileNotFoundError(f"{path}: directory has no tokenizer.json or tokenizer.model")
        if _read_config(p).get("tokenizer_class") == BYTES_CLASS and not any((p / n).exists() for n in TOKENIZER_FILES):
            return ByteTokenizer()
        p = next(p / n for n in TOKENIZER_FILES if (p / n).exists())
    if not p.exists():
        raise DataFileNotFoundError(f"tokenizer file not found: {p}")
    if p.suffix == ".gguf":
        tok = _gguf_tokenizer(p)
        if eos_token is not None:
            tok.eos_id = _special_ids({}, tok.token_to_id, eos_token, str(p))["eos_id"]
        tok.name = str(p)
        return tok
    if p.suffix == ".model":
        eos = None
        if eos_token is not None:
            import sentencepiece as spm

            eos = spm.SentencePieceProcessor(model_file=str(p)).piece_to_id(eos_token)
        return SentencePieceTokenizer(p, eos_id=eos)
    return HFTokenizer.from_file(p, eos_token=eos_token)


def as_tokenizer(obj, *, name: str | None = None, eos_token: str | None = None) -> Tokenizer:
    """A document-mode Tokenizer (the data pipeline's view) from what a user may hold: a Tokenizer, a path, a
    `tokenizers.Tokenizer`, or anything with encode / decode / eos_id / vocab_size."""
    if isinstance(obj, (str, os.PathLike)):
        return load_tokenizer(obj, eos_token=eos_token).for_documents()
    if isinstance(obj, Tokenizer):
        if eos_token is not None:
            eos = obj.token_to_id(eos_token)
            if eos is None:
                raise DataError(f"{obj.name}: eos_token {eos_token!r} is not in the vocabulary")
            obj = copy.copy(obj)
            obj.eos_id = eos
        return obj.for_documents()
    from tokenizers import Tokenizer as _Tk

    if isinstance(obj, _Tk):
        ids = _special_ids({}, obj.token_to_id, eos_token, name or "tokenizers.Tokenizer")
        if ids["eos_id"] is None:
            raise DataError(f"{name or 'tokenizers.Tokenizer'}: cannot tell the EOS token; pass eos_token=")
        return HFTokenizer(obj, eos_id=ids["eos_id"], name=name or "tokenizers.Tokenizer")
    if all(hasattr(obj, a) for a in ("encode", "decode", "eos_id", "vocab_size")):
        return GenericTokenizer(obj).for_documents()
    raise DataError(f"cannot use {type(obj).__name__} as a tokenizer (needs encode, decode, eos_id, vocab_size)")


__all__ = ["Tokenizer", "HFTokenizer", "SentencePieceTokenizer", "ByteTokenizer", "GenericTokenizer", "Tok",
           "FimIds", "FIM_TOKENS", "load_tokenizer", "as_tokenizer", "has_tokenizer", "read_gguf_metadata"]

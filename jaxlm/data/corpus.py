"""The embedded default corpus: real text that ships with Python itself, no download.

- language: the interpreter's bundled documentation (`pydoc_data.topics.topics`, the text behind `help()`), one
  document per section (a heading and its body);
- code: the interpreter's standard-library `.py` sources (tests, vendored packages, encodings tables and generated
  data excluded), one document per file, a deterministic ~1.5 MB selection.

Each has a held-out split (about 10% of documents, chosen by a hash of the document's name so that the split is
stable) that never appears in training. `default_tokenizer()` is a byte-level BPE trained deterministically on the
training split (vocab 1024, special tokens <|endoftext|> (EOS) and the four FIM tokens), cached on disk under
$JAXLM_CACHE/data (default ~/.cache/jaxlm/data) keyed by a hash of the corpus and the trainer settings.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sysconfig
import threading

from jaxlm.data.sources import DataError, SourceSpec, cache_dir
from jaxlm.data.tokenizer import FIM_TOKENS, HFTokenizer

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN,) + FIM_TOKENS
HELDOUT_MOD = 10  # one document in ten is held out
CODE_BUDGET = {"train": 1_500_000, "heldout": 200_000}  # characters
_MAX_FILE = 60_000
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "encodings", "pydoc_data",
              "ensurepip", "__pycache__", "lib2to3", "turtledemo", "idlelib", "tkinter", "__phello__"}
_RECIPE = "jaxlm-corpus-v1"
_LOCK = threading.Lock()


def _bucket(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _split_of(name: str) -> str:
    return "heldout" if _bucket(name) % HELDOUT_MOD == 0 else "train"


_HEADING = re.compile(r"^(.+)\n([*=\-~^]{3,})[ \t]*$", re.M)


@functools.lru_cache(maxsize=None)
def _language_docs() -> dict[str, tuple[str, ...]]:
    from pydoc_data.topics import topics

    out: dict[str, list[str]] = {"train": [], "heldout": []}
    for key in sorted(topics):
        text = topics[key]
        starts = [m.start() for m in _HEADING.finditer(text) if len(m.group(2).strip()) == len(m.group(1).rstrip())]
        if not starts or starts[0] != 0:
            starts = [0] + starts
        bounds = starts + [len(text)]
        for i in range(len(starts)):
            sec = text[bounds[i]:bounds[i + 1]].strip("\n")
            if sec.strip():
                out[_split_of(f"{key}#{i}")].append(sec + "\n")
    return {k: tuple(v) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _code_docs() -> dict[str, tuple[str, ...]]:
    lib = sysconfig.get_paths()["stdlib"]
    cands: dict[str, list[tuple[int, str, int]]] = {"train": [], "heldout": []}
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("config-", "test")))
        for f in sorted(files):
            if not f.endswith(".py") or f.startswith("test_"):
                continue
            full = os.path.join(root, f)
            rel = os.path.relpath(full, lib).replace(os.sep, "/")
            size = os.path.getsize(full)
            if 0 < size <= _MAX_FILE:
                cands[_split_of(rel)].append((_bucket("order:" + rel), rel, size))
    out = {}
    for split, items in cands.items():
        chosen, total = [], 0
        for _, rel, size in sorted(items):  # a hash order: a spread over the whole library, not just a..m
            if total >= CODE_BUDGET[split]:
                break
            try:
                with open(os.path.join(lib, rel), encoding="utf-8") as fh:
                    text = fh.read()
            except UnicodeDecodeError:
                continue
            chosen.append((rel, text))
            total += len(text)
        out[split] = tuple(t for _, t in sorted(chosen))
    if not out["train"]:
        raise DataError(f"no standard-library .py sources found under {lib}")
    return out


def embedded_documents(key: str) -> list[str]:
    """Documents of 'code:train', 'code:heldout', 'language:train' or 'language:heldout'."""
    name, _, split = (key or "").partition(":")
    split = split or "train"
    if name not in ("code", "language") or split not in ("train", "heldout"):
        raise DataError(f"embedded source {key!r}: expected 'code' or 'language', split 'train' or 'heldout'")
    return list((_code_docs() if name == "code" else _language_docs())[split])


def embedded_corpus(split: str = "train") -> dict[str, SourceSpec]:
    """{'code': ..., 'language': ...} SourceSpecs of the embedded corpus; split 'train' or 'heldout'."""
    if split not in ("train", "heldout"):
        raise DataError(f"embedded_corpus(split={split!r}): expected 'train' or 'heldout'")
    return {"code": SourceSpec("embedded", kind="code", embedded=f"code:{split}"),
            "language": SourceSpec("embedded", kind="language", embedded=f"language:{split}")}


def train_bpe(texts, vocab_size: int = 1024, special_tokens=SPECIAL_TOKENS):
    """A byte-level BPE (`tokenizers`) trained on `texts`; deterministic for a given input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(list(texts), trainer)
    return tk


_TOKENIZERS: dict = {}


def default_tokenizer(vocab_size: int = 1024) -> HFTokenizer:
    """The BPE tokenizer of the embedded corpus (trained once, then loaded from the disk cache)."""
    from tokenizers import Tokenizer, __version__ as tk_version

    if not 260 + len(SPECIAL_TOKENS) <= vocab_size <= 65536:
        raise DataError(f"default_tokenizer(vocab_size={vocab_size}): expected 261..65536")
    with _LOCK:
        if vocab_size in _TOKENIZERS:
            return _TOKENIZERS[vocab_size]
        code, lang = _code_docs()["train"], _language_docs()["train"]
        h = hashlib.blake2b(digest_size=12)
        for part in (_RECIPE, tk_version, str(vocab_size), *SPECIAL_TOKENS):
            h.update(part.encode() + b"\0")
        for t in code + lang:
            h.update(t.encode("utf-8", "surrogatepass") + b"\0")
        path = os.path.join(cache_dir(), f"tokenizer-{h.hexdigest()}.json")
        if os.path.exists(path):
            tk = Tokenizer.from_file(path)
        else:
            tk = train_bpe(lang + code, vocab_size)
            tmp = f"{path}.{os.getpid()}.tmp"
            tk.save(tmp)
            os.replace(tmp, path)
        tok = HFTokenizer(tk, eos_id=tk.token_to_id(EOS_TOKEN), name=f"jaxlm-default-bpe{vocab_size}")
        _TOKENIZERS[vocab_size] = tok
        return tok

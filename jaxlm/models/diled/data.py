"""DiLED's embedded real data (no download) and its encodings.

- images: scikit-learn's bundled handwritten digits (1,797 8x8 images, values 0..16 scaled to [-1, 1]); a fixed
  split: a seed-0 permutation, the last 297 images held out.
- text: natural sentences from the Python documentation that ships with the interpreter (`pydoc_data.topics`,
  the text behind help(), and the standard library's module / class / function docstrings), split on sentence
  ends, 20..46 plain ASCII characters; held out by a hash of the sentence (1 in 10), so the split never changes.
  Two tokenizations (`text_codec(ae_cfg)`): byte-level tokens (0..255, PAD 256, BOS 257, EOS 258), or (the tiny
  preset's default) a small byte-pair encoding learned from the training sentences only (`CorpusBPE`: the 95
  printable ASCII characters plus merges, GPT-2-style words with their leading space, digits split; PAD, BOS, EOS
  last), so a held-out sentence always encodes losslessly, rare words as several pieces. About 8 pieces a
  sentence instead of ~35 bytes: a tiny decoder can fit the corpus in a few CPU minutes.
- proteins: the Gifford antibody CDR3 set (`train.csv` / `test.csv`, columns CDR3,enrichment, 20 symbols padded
  with 'J'), read from a directory (default: `$JAXLM_GIFFORD` or ../shared/data/gifford beside the checkout).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import platform
import re
from pathlib import Path

import numpy as np

from jaxlm.errors import ConfigError, DataError, DataFileNotFoundError, ShapeError
from jaxlm.models.diled.autoencoders import BYTE_BOS, BYTE_EOS, BYTE_PAD, PROTEIN_ALPHABET, PROTEIN_PAD

# ------------------------------------------------------------------------------------------------ bytes


def encode_text(sentences, max_len: int) -> np.ndarray:
    """[N, max_len] int32: BOS, the UTF-8 bytes, EOS, PAD... A sentence that does not fit raises ShapeError."""
    out = np.full((len(sentences), max_len), BYTE_PAD, np.int32)
    for i, s in enumerate(sentences):
        b = list(s.encode("utf-8"))
        if len(b) + 2 > max_len:
            raise ShapeError(f"sentence {i} ({s[:30]!r}...) is {len(b)} bytes; with BOS/EOS it needs {len(b) + 2} "
                             f"> max_len={max_len} token slots")
        out[i, :len(b) + 2] = [BYTE_BOS, *b, BYTE_EOS]
    return out


def decode_text(tokens) -> list[str]:
    """Token rows -> strings (stops at EOS / PAD; BOS and other specials dropped)."""
    out = []
    for row in np.asarray(tokens):
        bs = bytearray()
        for t in row:
            t = int(t)
            if t in (BYTE_EOS, BYTE_PAD):
                break
            if t < 256:
                bs.append(t)
        out.append(bs.decode("utf-8", errors="replace"))
    return out


_SENT = re.compile(r"(?<=[.!?])\s+")
_OK = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-]*[a-z0-9)\"][.!?]$")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "encodings", "pydoc_data",
              "ensurepip", "__pycache__", "lib2to3", "turtledemo", "idlelib"}


def _doc_texts():
    """pydoc_data.topics sections, then every docstring (module, class, function) of the standard library."""
    import ast
    import sysconfig

    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    lib = sysconfig.get_paths()["stdlib"]
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("config-", "test")))
        for f in sorted(files):
            if not f.endswith(".py") or f.startswith("test_"):
                continue
            try:
                tree = ast.parse(Path(root, f).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in [tree] + [n for n in ast.walk(tree)
                                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]:
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


@functools.lru_cache(maxsize=None)
def _all_sentences(min_chars: int, max_chars: int) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for text in _doc_texts():
        for s in _SENT.split(re.sub(r"\s+", " ", text)):
            s = s.strip()
            if min_chars <= len(s) <= max_chars and _OK.match(s):
                seen.setdefault(s)
    return tuple(sorted(seen))


def doc_sentences(min_chars: int = 20, max_chars: int = 46) -> dict[str, list[str]]:
    """{"train": [...], "heldout": [...]} natural sentences from the documentation shipped with Python
    (deterministic; the held-out tenth is chosen by a hash of each sentence)."""
    out = {"train": [], "heldout": []}
    for s in _all_sentences(min_chars, max_chars):
        h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
        out["heldout" if h % 10 == 0 else "train"].append(s)
    return out


# ------------------------------------------------------------------------------------------ corpus BPE

_PRE = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^ A-Za-z0-9]| +")
_BASE = tuple(chr(c) for c in range(32, 127))


class CorpusBPE:
    """A byte-pair encoding learned from `sentences`: pieces 0..num_pieces-1 (the 95 printable ASCII characters,
    then merged pieces by merge order), then PAD, BOS, EOS. Deterministic (ties broken by the pair's text).
    `encode(sentences, max_len)` / `decode(tokens)` as encode_text / decode_text."""

    def __init__(self, sentences, num_pieces: int):
        if num_pieces < len(_BASE):
            raise ConfigError(f"CorpusBPE: num_pieces={num_pieces} < the {len(_BASE)} printable ASCII characters")
        words: dict[tuple, int] = {}
        for s in sentences:
            for w in _PRE.findall(s):
                words[tuple(w)] = words.get(tuple(w), 0) + 1
        pieces = list(_BASE)
        merges: dict[tuple, int] = {}
        seqs = [list(w) for w in words]
        freq = list(words.values())
        pairs: dict[tuple, int] = {}
        where: dict[tuple, set] = {}
        for i, w in enumerate(seqs):
            for p in zip(w, w[1:]):
                pairs[p] = pairs.get(p, 0) + freq[i]
                where.setdefault(p, set()).add(i)
        while len(pieces) < num_pieces and pairs:
            best = min(pairs, key=lambda p: (-pairs[p], p))
            if pairs[best] < 2:
                break
            merges[best] = len(merges)
            new = best[0] + best[1]
            pieces.append(new)
            for i in sorted(where.pop(best, ())):
                w = seqs[i]
                for p in zip(w, w[1:]):
                    pairs[p] -= freq[i]
                out, j = [], 0
                while j < len(w):
                    if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                        out.append(new)
                        j += 2
                    else:
                        out.append(w[j])
                        j += 1
                seqs[i] = out
                for p in zip(out, out[1:]):
                    pairs[p] = pairs.get(p, 0) + freq[i]
                    where.setdefault(p, set()).add(i)
            pairs = {p: c for p, c in pairs.items() if c > 0}
        self._set(pieces, merges)

    def _set(self, pieces, merges):
        self.pieces = list(pieces)
        self.merges = dict(merges)
        self.ids = {p: i for i, p in enumerate(pieces)}
        self.pad_id, self.bos_id, self.eos_id = len(pieces), len(pieces) + 1, len(pieces) + 2
        self.vocab_size = len(pieces) + 3
        self._cache: dict[str, list[int]] = {}

    def spec(self) -> dict:
        """The whole codec as JSON-able data: {"kind", "pieces", "merges" (in rank order), "sha256"}."""
        body = {"kind": "corpus_bpe", "pieces": self.pieces,
                "merges": [list(p) for p, _ in sorted(self.merges.items(), key=lambda kv: kv[1])]}
        return {**body, "sha256": _spec_sha(body)}

    @classmethod
    def from_spec(cls, spec: dict, where: str = "the tokenizer spec") -> "CorpusBPE":
        """The codec `spec()` wrote (its sha256 checked: an edited piece table raises DataError naming `where`)."""
        try:
            body = {"kind": spec["kind"], "pieces": list(spec["pieces"]), "merges": [list(m) for m in spec["merges"]]}
            sha = spec["sha256"]
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: not a corpus BPE spec (missing {e})") from None
        if body["kind"] != "corpus_bpe" or sha != _spec_sha(body):
            raise DataError(f"{where}: the corpus BPE spec's sha256 does not match its pieces / merges (the file was "
                            f"edited or is corrupt)")
        self = cls.__new__(cls)
        self._set(body["pieces"], {tuple(m): i for i, m in enumerate(body["merges"])})
        return self

    def _word(self, w: str) -> list[int]:
        if w not in self._cache:
            seq = list(w)
            while len(seq) > 1:
                ranks = [self.merges.get(p, len(self.merges)) for p in zip(seq, seq[1:])]
                j = min(range(len(ranks)), key=ranks.__getitem__)
                if ranks[j] == len(self.merges):
                    break
                seq[j:j + 2] = [seq[j] + seq[j + 1]]
            self._cache[w] = [self.ids[p] for p in seq]
        return self._cache[w]

    def tokenize(self, s: str, where: str = "sentence") -> list[int]:
        bad = next((c for c in s if c not in self.ids), None)
        if bad is not None:
            raise DataError(f"{where} {s[:30]!r}: character {bad!r} is outside the corpus BPE's alphabet "
                            f"(printable ASCII)")
        return [t for w in _PRE.findall(s) for t in self._word(w)]

    def encode(self, sentences, max_len: int) -> np.ndarray:
        out = np.full((len(sentences), max_len), self.pad_id, np.int32)
        for i, s in enumerate(sentences):
            t = self.tokenize(s, f"sentence {i}")
            if len(t) + 2 > max_len:
                raise ShapeError(f"sentence {i} ({s[:30]!r}...) is {len(t)} BPE pieces; with BOS/EOS it needs "
                                 f"{len(t) + 2} > max_len={max_len} token slots")
            out[i, :len(t) + 2] = [self.bos_id, *t, self.eos_id]
        return out

    def decode(self, tokens) -> list[str]:
        out = []
        for row in np.asarray(tokens):
            s = []
            for t in row:
                t = int(t)
                if t in (self.eos_id, self.pad_id):
                    break
                if t < len(self.pieces):
                    s.append(self.pieces[t])
            out.append("".join(s))
        return out


class ByteCodec:
    """encode_text / decode_text as an object (the interface CorpusBPE has)."""
    pad_id, bos_id, eos_id, vocab_size = BYTE_PAD, BYTE_BOS, BYTE_EOS, BYTE_PAD + 3

    def encode(self, sentences, max_len: int) -> np.ndarray:
        return encode_text(sentences, max_len)

    def decode(self, tokens) -> list[str]:
        return decode_text(tokens)


@functools.lru_cache(maxsize=None)
def corpus_bpe(vocab_size: int, min_chars: int = 20, max_chars: int = 46) -> CorpusBPE:
    """The BPE of the training split of doc_sentences (never the held-out sentences), vocab_size incl. the 3
    specials (cached per process)."""
    return CorpusBPE(doc_sentences(min_chars, max_chars)["train"], vocab_size - 3)


def text_codec(ae_cfg):
    """The tokenizer a TextAEConfig names (`tokenizer` "bytes" or "bpe"), checked against its vocab / specials."""
    if ae_cfg.tokenizer == "bytes":
        codec = ByteCodec()
    else:
        codec = corpus_bpe(ae_cfg.decoder.vocab_size)
    return _checked(codec, ae_cfg)


def _checked(codec, ae_cfg):
    got = (codec.vocab_size, codec.pad_id, codec.bos_id, codec.eos_id)
    want = (ae_cfg.decoder.vocab_size, ae_cfg.pad_id, ae_cfg.bos_id, ae_cfg.eos_id)
    if got != want:
        raise ConfigError(f"TextAEConfig(tokenizer={ae_cfg.tokenizer!r}): the tokenizer has (vocab, pad, bos, eos) "
                          f"= {got}, the config {want}")
    return codec


TOKENIZER_FILE = "tokenizer.json"


def _spec_sha(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_codec(ae_cfg, run_dir) -> Path | None:
    """Write the corpus BPE a text config uses (its pieces and merges, rebuilt from this interpreter's docs) to
    run_dir/tokenizer.json, with the Python version; None (nothing written) for the byte tokenizer. A file already
    there (a resumed run) is kept and checked: check_saved_codec."""
    if ae_cfg.tokenizer != "bpe":
        return None
    f = Path(run_dir) / TOKENIZER_FILE
    if f.is_file():
        check_saved_codec(ae_cfg, run_dir)
        return f
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({**text_codec(ae_cfg).spec(), "python": platform.python_version()}))
    return f


def load_codec(ae_cfg, run_dir):
    """The codec saved with a run (run_dir/tokenizer.json), checked against ae_cfg's vocab / specials; the
    byte tokenizer for tokenizer="bytes". A run saved without the file falls back to text_codec(ae_cfg)."""
    f = Path(run_dir) / TOKENIZER_FILE
    if ae_cfg.tokenizer != "bpe" or not f.is_file():
        return text_codec(ae_cfg)
    try:
        spec = json.loads(f.read_text())
    except ValueError as e:
        raise DataError(f"{f}: not JSON ({e})") from None
    return _checked(CorpusBPE.from_spec(spec, str(f)), ae_cfg)


def check_saved_codec(ae_cfg, run_dir) -> None:
    """Raise TokenizerMismatchError naming run_dir/tokenizer.json when the codec text_codec(ae_cfg) rebuilds in
    this interpreter is not the one the run was trained with (a different Python: other docstrings, other pieces
    of the same vocab size, silently remapped tokens)."""
    f = Path(run_dir) / TOKENIZER_FILE
    if ae_cfg.tokenizer != "bpe" or not f.is_file():
        return
    saved = load_codec(ae_cfg, run_dir)
    now = text_codec(ae_cfg)
    if saved.spec()["sha256"] != now.spec()["sha256"]:
        py = json.loads(f.read_text()).get("python", "?")
        diff = sum(a != b for a, b in zip(saved.pieces, now.pieces)) + abs(len(saved.pieces) - len(now.pieces))
        raise TokenizerMismatchError(
            f"{f}: the run's corpus BPE (built under Python {py}) differs from the one this interpreter (Python "
            f"{platform.python_version()}) rebuilds from its docs in {diff} of {len(saved.pieces)} pieces; decode "
            f"with data.load_codec(ae_cfg, run_dir) (the saved pieces) or run under Python {py}")


class TokenizerMismatchError(DataError):
    """The tokenizer rebuilt at load is not the one saved with the run."""


# ----------------------------------------------------------------------------------------------- digits


def digits(heldout: int = 297) -> dict[str, dict[str, np.ndarray]]:
    """{"train": {"image": [N, 8, 8, 1] in [-1, 1], "label": [N]}, "heldout": {...}}."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    y = d.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:-heldout], order[-heldout:]
    return {"train": {"image": x[tr], "label": y[tr]}, "heldout": {"image": x[te], "label": y[te]}}


# --------------------------------------------------------------------------------------------- proteins

_SYM = {c: i for i, c in enumerate(PROTEIN_ALPHABET)}


def encode_protein(seqs, seq_len: int = 20, *, where: str = "sequence") -> np.ndarray:
    """[N, seq_len] int32 over the 22-symbol alphabet; shorter sequences are right-padded with 'J'. A symbol
    outside the alphabet or a sequence longer than seq_len raises DataError / ShapeError naming it."""
    out = np.full((len(seqs), seq_len), PROTEIN_PAD, np.int32)
    for i, s in enumerate(seqs):
        if len(s) > seq_len:
            raise ShapeError(f"{where} {i}: {s!r} has {len(s)} symbols > seq_len={seq_len}")
        for j, c in enumerate(s):
            if c not in _SYM:
                raise DataError(f"{where} {i}: {s!r} has {c!r} at position {j}, outside the protein alphabet "
                                f"{PROTEIN_ALPHABET!r}")
            out[i, j] = _SYM[c]
    return out


def decode_protein(tokens) -> list[str]:
    return ["".join(PROTEIN_ALPHABET[int(t)] for t in row) for row in np.asarray(tokens)]


def default_gifford_dir() -> Path:
    env = os.environ.get("JAXLM_GIFFORD")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[3]          # the checkout
    return here.parent / "shared" / "data" / "gifford"


def gifford(path=None, limit: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{"train": {"tokens": [N, 20], "fitness": [N]}, "heldout": (the test split)}; `limit` keeps the first rows."""
    root = Path(path) if path is not None else default_gifford_dir()
    out = {}
    for split, name in (("train", "train.csv"), ("heldout", "test.csv")):
        f = root / name
        if not f.is_file():
            raise DataFileNotFoundError(f"{f}: the Gifford CDR3 file is missing (pass --data DIR or set "
                                        f"JAXLM_GIFFORD to the folder with train.csv / test.csv)")
        seqs, fit = [], []
        with open(f, newline="") as fh:
            rd = csv.reader(fh)
            header = next(rd, None)
            if header is None or [h.strip() for h in header[:2]] != ["CDR3", "enrichment"]:
                raise DataError(f"{f}: expected the header 'CDR3,enrichment', got {header}")
            for row in rd:
                if limit is not None and len(seqs) >= limit:
                    break
                seqs.append(row[0].strip())
                fit.append(float(row[1]))
        out[split] = {"tokens": encode_protein(seqs, where=f"{f} row"), "fitness": np.asarray(fit, np.float32)}
    return out


__all__ = ["encode_text", "decode_text", "doc_sentences", "CorpusBPE", "ByteCodec", "corpus_bpe", "text_codec", "save_codec", "load_codec", "check_saved_codec",
           "TokenizerMismatchError", "TOKENIZER_FILE", "digits", "encode_protein", "decode_protein", "gifford",
           "default_gifford_dir"]

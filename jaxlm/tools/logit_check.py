"""Compare a checkpoint's logits with golden logits from a reference implementation.

    python -m jaxlm.tools.logit_check --checkpoint DIR --golden FILE.safetensors [--family F]
        [--logits-key logits] [--atol 1e-4]

The golden file holds `input_ids` [B, T] and the reference logits [B, T, V] (as in ../shared/fixtures). Prints
max |diff|, max relative diff and mean KL(reference || ours); exits 1 when max |diff| > --atol, 2 on bad input.
Works for every model family registered in jaxlm.tools.logit_check.LOADERS.
"""

from __future__ import annotations

import os
import sys

from jaxlm.cli import command_parser
from jaxlm.errors import ConfigError, ShapeError

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _load_decoder(path, family, overrides=None):
    from jaxlm.io import load_model
    from jaxlm.io.hf import build_model, flat_params

    model, cfg, _ = load_model(path, family=family, tokenizer=False)
    if overrides:
        model = build_model(cfg.replace(**overrides), flat_params(model))
    return model


def _parse_overrides(items):
    """['attn_bf16_round=true', 'norm_eps=1e-6'] -> dict with bool/int/float values parsed."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--override {it!r}: expected FIELD=VALUE")
        k, v = it.split("=", 1)
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


# family name -> loader(path, family, overrides) -> callable(input_ids) -> logits. Later model families register here.
LOADERS = {name: _load_decoder for name in ("llama", "mobillama", "phi", "crystalcoder", None)}


def compare(ref, got) -> dict:
    import numpy as np

    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        v = min(ref.shape[-1], got.shape[-1])
        if ref.shape[:-1] != got.shape[:-1]:
            raise ShapeError(f"logits shape {got.shape} does not match golden {ref.shape}")
        ref, got = ref[..., :v], got[..., :v]
    diff = np.abs(ref - got)
    rel = diff / np.maximum(np.abs(ref), 1e-6)

    def logp(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = logp(ref), logp(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float(rel.max()), "mean_kl": float(kl.mean()),
            "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean())}


def main(argv=None) -> int:
    ap = command_parser("jaxlm.tools.logit_check", __doc__.strip(),
                        reads="--checkpoint (an HF directory, or a .safetensors / .gguf file) and --golden (a "
                              "safetensors file with --ids-key [B, T] and --logits-key [B, T, V])",
                        writes="max |diff|, max relative diff, mean KL and argmax agreement to stdout, then PASS or "
                               "FAIL; exit status 0 (pass), 1 (max |diff| > --atol) or 2 (bad input); no files")
    ap.add_argument("--checkpoint", required=True, help="HF checkpoint directory (or .safetensors / .gguf file)")
    ap.add_argument("--golden", required=True, help="safetensors with input_ids and logits")
    ap.add_argument("--family", default=None, help="model family (default: detected from config.json)")
    ap.add_argument("--logits-key", default="logits", help="array in --golden holding the reference logits")
    ap.add_argument("--ids-key", default="input_ids", help="array in --golden holding the token ids")
    ap.add_argument("--atol", type=float, default=1e-4, help="largest max |diff| that passes")
    ap.add_argument("--override", action="append", metavar="FIELD=VALUE",
                    help="change a config field after loading, e.g. attn_bf16_round=true for MobiLlama's "
                         "bfloat16 flash-attention logits")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    from safetensors.numpy import load_file

    from jaxlm.errors import JaxlmError

    jax.config.update("jax_default_matmul_precision", "highest")
    if not os.path.exists(args.golden):
        print(f"error: --golden {args.golden}: file not found", file=sys.stderr)
        return 2
    try:
        golden = load_file(args.golden)
    except Exception as e:  # noqa: BLE001
        print(f"error: --golden {args.golden}: cannot read safetensors ({e})", file=sys.stderr)
        return 2
    for key in (args.ids_key, args.logits_key):
        if key not in golden:
            print(f"error: --golden {args.golden} has no array {key!r}; it has {sorted(golden)}", file=sys.stderr)
            return 2
    if args.family not in LOADERS:
        print(f"error: --family {args.family!r}: expected one of {sorted(k for k in LOADERS if k)}", file=sys.stderr)
        return 2
    try:
        model = LOADERS[args.family](args.checkpoint, args.family, _parse_overrides(args.override))
    except (JaxlmError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ids = np.asarray(golden[args.ids_key]).astype(np.int32)
    ref = golden[args.logits_key]
    if ref.shape[:2] != ids.shape:  # e.g. decode_logits cover only the last positions
        print(f"error: {args.logits_key} shape {ref.shape} does not cover {args.ids_key} {ids.shape}", file=sys.stderr)
        return 2
    got = np.asarray(jax.jit(lambda x: model(x))(ids))
    try:
        stats = compare(ref, got)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = stats["max_abs_diff"] <= args.atol
    print(f"checkpoint: {args.checkpoint}\ngolden:     {args.golden} [{args.logits_key}] shape {list(ref.shape)}")
    for k, v in stats.items():
        print(f"{k:17s} {v:.3e}")
    print(f"{'PASS' if ok else 'FAIL'}: max |diff| {stats['max_abs_diff']:.3e} {'<=' if ok else '>'} atol {args.atol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

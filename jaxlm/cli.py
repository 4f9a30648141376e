"""Every user-facing command in one registry, and the conventions they share.

    python -m jaxlm                       # list the commands
    python -m jaxlm crystal --mesh 8x1    # = python -m recipes.crystal --mesh 8x1
    python -m jaxlm generate --help

Convention: a command is a module with `main(argv=None) -> int` (0 = success, 2 = bad input, printed as one
`error: ...` line naming the flag or file), runnable as `python -m <module>` and registered in `COMMANDS` below.
Its parser comes from `command_parser`, whose help ends with what the command READS and WRITES and shows every
default. A command that takes `--mesh` adds it with `add_mesh_argument` and calls `jaxlm.sharding.prepare_devices`
right after parsing, before jax is imported, then `jaxlm.sharding.make_mesh`. Importing this module imports no jax.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import sys
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str                 # python -m jaxlm NAME
    module: str               # python -m MODULE (the module's main(argv) -> int)
    summary: str
    aliases: tuple = ()


COMMANDS: tuple[Command, ...] = (
    Command("crystal", "recipes.crystal", "pretrain CrystalCoder: 3 phases language -> code, muP (the main job)"),
    Command("amber", "recipes.amber", "pretrain Amber (LLaMA-7B): warmup + cosine"),
    Command("mobillama", "recipes.mobillama", "pretrain MobiLlama (one FFN shared by all blocks)"),
    Command("export", "recipes.export", "export a training run's checkpoint to a Hugging Face directory"),
    Command("generate", "jaxlm.generate", "generate text from a prompt (streamed)"),
    Command("serve", "jaxlm.serve", "OpenAI-compatible HTTP server"),
    Command("logit-check", "jaxlm.tools.logit_check", "compare a checkpoint's logits with golden logits",
            ("logit_check",)),
    Command("quantize", "recipes.flute", "FLUTE LUT quantization with perplexity before/after", ("flute",)),
    Command("distill", "recipes.mohawk", "MOHAWK: distil a Transformer into a Mamba-2 student", ("mohawk",)),
    Command("align", "recipes.drpo", "DRPO: tuning-free self-alignment (system prompt + ICL search)", ("drpo",)),
    Command("diled", "recipes.diled", "DiLED/EDDPM: joint encoder-decoder + latent diffusion (text, image, protein)",
            ("eddpm",)),
    Command("eval", "jaxlm.eval.cli", "lm-evaluation-harness (lm_eval ARGS) with --model jaxlm and the offline tasks",
            ("lm_eval", "lm-eval")),
    Command("analysis", "recipes.analysis", "a run's checkpoints: held-out ppl, harness tasks, memorization curves"),
    Command("web2code", "recipes.web2code", "Web2Code: webpage-to-HTML MLLM (LLaVA stages) with WUB/Design2Code vs "
            "baselines"),
    Command("pandora", "recipes.pandora", "Pandora world model: free-text actions -> video states, staged, rollout GIF"),
    Command("concepts", "recipes.concepts", "discrete latent hierarchies: structure, concept learner, networks, probes"),
)


def find(name: str) -> Command:
    for c in COMMANDS:
        if name == c.name or name in c.aliases or name == c.module:
            return c
    from jaxlm.errors import ConfigError

    raise ConfigError(f"unknown command {name!r}: expected one of {[c.name for c in COMMANDS]}")


def load_main(cmd: Command):
    return importlib.import_module(cmd.module).main


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description/epilog line breaks and appends "(default: X)" to options whose help does not say it
    (options without a help string included)."""

    @staticmethod
    def _shows_default(action) -> bool:
        return (bool(action.option_strings) and not action.required and action.help is not argparse.SUPPRESS
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and action.default != []
                and "default" not in (action.help or "").lower())

    def _format_action(self, action):
        if not action.help and self._shows_default(action):
            action = copy.copy(action)
            action.help = " "
        return super()._format_action(action)

    def _get_help_string(self, action):
        h = (action.help or "").strip()
        return (h + " " if h else "") + "(default: %(default)s)" if self._shows_default(action) else h


def command_parser(module: str, description: str, *, reads: str, writes: str, epilog: str = "",
                   **kw) -> argparse.ArgumentParser:
    """The parser of a registered command: prog `python -m MODULE`, the description kept as written (examples),
    then `epilog` (prose, wrapped) and the "reads:" and "writes:" paragraphs (inputs and outputs with defaults)."""
    wrap = lambda text, head: textwrap.fill(" ".join(text.split()), WIDTH, initial_indent=head,  # noqa: E731
                                            subsequent_indent=" " * len(head))
    tail = wrap(reads, "reads:  ") + "\n" + wrap(writes, "writes: ")
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description,
                                   epilog=(wrap(epilog, "") + "\n\n" + tail) if epilog else tail,
                                   formatter_class=HelpFormatter, **kw)


WIDTH = 100


MESH_HELP = "AxB = fsdp x tensor, AxBxC = data x fsdp x tensor, one -1 fills the devices"


def add_mesh_argument(parser: argparse.ArgumentParser, default: str | None, what: str = "device mesh") -> None:
    """The one --mesh flag (parsed by jaxlm.sharding.mesh_dims; prepared by jaxlm.sharding.prepare_devices)."""
    d = f"default {default}" if default else "default: one device, no mesh"
    parser.add_argument("--mesh", default=default, metavar="AxB[xC]",
                        help=f"{what}: {MESH_HELP} ({d}); a CPU-only machine simulates the devices it needs")
    # let `--mesh -1x2` through: argparse takes a value starting with "-" for an option unless it looks like a
    # negative number, so mesh strings join its negative-number pattern
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-?\d+(x-?\d+)+$")


def run_command(run, args, mesh=None) -> int:
    """A command's main body: prepare `mesh`'s devices (before jax is imported; None = no mesh), call `run(args)`;
    a JaxlmError becomes an `error: ...` line on stderr and exit status 2 (nothing else is caught)."""
    from jaxlm.errors import JaxlmError
    from jaxlm.sharding import prepare_devices

    try:
        prepare_devices(mesh)
        rc = run(args)
    except JaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if rc is None else int(rc)


def usage() -> str:
    w = max(len(c.name) for c in COMMANDS)
    rows = [f"  {c.name:<{w}}  {c.summary}  [python -m {c.module}]" for c in COMMANDS]
    return ("usage: python -m jaxlm COMMAND [ARGS...]   (python -m jaxlm COMMAND --help for its inputs and outputs)"
            "\n\ncommands:\n" + "\n".join(rows))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    from jaxlm.errors import JaxlmError

    try:
        cmd = find(argv[0])
    except JaxlmError as e:
        print(f"error: {e}\n\n{usage()}", file=sys.stderr)
        return 2
    rc = load_main(cmd)(argv[1:])
    return 0 if rc is None else int(rc)

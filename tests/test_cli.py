"""Every user-facing command is registered in jaxlm.cli, follows `main(argv) -> int`, runs as `python -m MODULE`
and as `python -m jaxlm NAME`, says in --help what it reads and writes, and prepares its --mesh the same way."""

import importlib
import inspect
import os
import subprocess
import sys

import pytest

from jaxlm import cli, sharding
from jaxlm.errors import ConfigError

NAMES = [c.name for c in cli.COMMANDS]


def test_registry_covers_every_command():
    assert set(NAMES) >= {"crystal", "amber", "mobillama", "export", "generate", "serve", "logit-check", "quantize",
                          "distill", "align"}
    # the old names keep working: module paths and recipe names
    assert cli.find("flute").module == cli.find("recipes.flute").module == "recipes.flute"
    assert cli.find("mohawk").name == "distill" and cli.find("drpo").name == "align"
    with pytest.raises(ConfigError, match="unknown command 'nope'"):
        cli.find("nope")


@pytest.mark.parametrize("name", NAMES)
def test_help_says_what_it_reads_and_writes(name, capsys):
    cmd = cli.find(name)
    mod = importlib.import_module(cmd.module)
    assert list(inspect.signature(mod.main).parameters) == ["argv"]
    assert 'if __name__ == "__main__":\n    sys.exit(main())' in inspect.getsource(mod)  # python -m MODULE
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {cmd.module}")
    reads = out.split("\nreads:", 1)[1].split("\nwrites:", 1)
    assert len(reads[0].split()) >= 5 and len(reads[1].split()) >= 5, out[-400:]  # inputs and outputs, in words
    assert "(default: " in out or "(default " in out  # defaults are shown


def test_dispatcher(capsys):
    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    assert all(f"python -m {c.module}" in listing for c in cli.COMMANDS)
    assert cli.main(["nope"]) == 2 and "unknown command" in capsys.readouterr().err
    assert cli.main(["crystal", "--print-config", "--steps", "30"]) == 0  # = python -m recipes.crystal ...
    assert '"name": "crystal-tiny"' in capsys.readouterr().out


def test_commands_prepare_the_mesh_through_one_function(monkeypatch, capsys):
    """The recipes, serve and generate all hand their --mesh to jaxlm.sharding.prepare_devices, and accept -1."""
    seen = []
    real = sharding.prepare_devices
    monkeypatch.setattr(sharding, "prepare_devices", lambda spec, **kw: seen.append(spec) or real(spec, **kw))
    assert cli.main(["crystal", "--mesh", "-1x2", "--print-config"]) == 0
    assert cli.main(["serve", "--mesh", "4x2", "--dry-run"]) == 0
    assert cli.main(["generate", "--mesh", "-1x2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert seen == ["-1x2", "4x2", "-1x2"]
    assert out.count("mesh data=1 fsdp=4 tensor=2 over 8 cpu devices") == 2
    assert cli.main(["serve", "--mesh", "3x1", "--dry-run"]) == 2  # 3 devices asked, 8 present: one clear line
    assert "--mesh '3x1' needs 3 devices but 8" in capsys.readouterr().err
    assert cli.main(["generate", "--mesh", "2xq", "--dry-run"]) == 2
    assert "--mesh '2xq': expected AxB" in capsys.readouterr().err


def test_serve_mesh_sets_the_simulated_devices_in_a_fresh_interpreter():
    """Before jax starts, `serve --mesh 2x1` sets the CPU device count the mesh needs (as the recipes do)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-m", "jaxlm", "serve", "--mesh", "2x1", "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr
    assert "mesh data=1 fsdp=2 tensor=1 over 2 cpu devices" in r.stdout

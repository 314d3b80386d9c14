#!/usr/bin/env bash
# Installs chatterbot-corpus and PyYAML from PyPI into .venv-corpus, then runs
# scripts/load_corpus.py with the given arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-corpus/bin/python ]; then
  python3 -m venv .venv-corpus
  .venv-corpus/bin/pip install --quiet 'chatterbot-corpus==1.3.3' 'PyYAML>=6,<7'
fi
exec .venv-corpus/bin/python scripts/load_corpus.py "$@"

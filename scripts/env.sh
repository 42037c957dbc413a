# Sourced by demo.sh and test.sh: sets PY to the Python that thinksae is installed into.
# By default a virtual environment in .venv (made once, then reused), which sees the system's
# site packages so that what is already installed there is not installed again; this also works
# where the system Python refuses `pip install` (PEP 668, "externally managed"). THINKSAE_VENV=0
# installs into $PYTHON (default python3) itself.
PY=${PYTHON:-python3}
if [ "${THINKSAE_VENV:-1}" != "0" ]; then
  if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv --system-site-packages .venv; then
      echo "thinksae: cannot make a virtual environment in .venv (Debian/Ubuntu: apt-get install python3-venv; or THINKSAE_VENV=0)" >&2
      exit 2
    fi
  fi
  PY=.venv/bin/python
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

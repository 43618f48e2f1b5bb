#!/bin/sh
# Create the virtual environment; on Debian/Ubuntu as root, install python3-venv first when it is missing.
set -eu
python=$1 venv=$2
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv
    else
        echo "make: $python cannot create a virtual environment; install python3-venv" >&2
        exit 1
    fi
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip

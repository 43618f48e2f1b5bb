#!/bin/sh
# Install the Debian packages listed in the given files, when running as root and they are missing.
# Never pulls recommended packages.
#   scripts/install-debs.sh [--optional] FILE...
# --optional: without root (or apt), say what is missing and go on instead of failing.
set -eu
optional=false
if [ "${1:-}" = "--optional" ]; then
    optional=true
    shift
fi
missing=""
for package in $(grep -hv '^#' "$@"); do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    if $optional; then
        echo "make: without root, these Debian packages stay missing:$missing" >&2
        exit 0
    fi
    echo "make: the tests need these Debian packages:$missing (run as root to install them)" >&2
    exit 1
fi
echo "Installing Debian packages:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing

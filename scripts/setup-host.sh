#!/bin/sh
# Make this Ubuntu machine a gpushare host: run the playbook in ansible/ against it
# (connection local) and register it with the router. The one-line path for a
# single box; fleets use ansible/ with an inventory (ansible/README.md).
#
#   sudo scripts/setup-host.sh --router https://gpushare.example --invite gpenr_...
#
# ansible-core comes from the PATH when there is one, else from a temporary
# virtualenv that is removed on exit.
set -eu

ANSIBLE_CORE_VERSION=${ANSIBLE_CORE_VERSION:-2.19.14}
USAGE="usage: setup-host.sh --router URL --invite KEY [--name NAME] [--engine-port PORT] [--no-gpu] [--pip-args ARGS] [-- ANSIBLE-PLAYBOOK-OPTIONS]"

usage_error() {
    echo "setup-host.sh: $1" >&2
    echo "$USAGE" >&2
    exit 2
}

fail() {
    echo "setup-host.sh: $1" >&2
    exit 1
}

router= invite= name= engine_port=8000 gpu=true pip_args=
while [ $# -gt 0 ]; do
    case $1 in
        --router|--invite|--name|--engine-port|--pip-args)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            case $1 in
                --router) router=$2 ;;
                --invite) invite=$2 ;;
                --name) name=$2 ;;
                --engine-port) engine_port=$2 ;;
                --pip-args) pip_args=$2 ;;
            esac
            shift 2 ;;
        --no-gpu) gpu=false; shift ;;
        -h|--help)
            echo "$USAGE"
            echo "  --router URL        the gpushare router's URL"
            echo "  --invite KEY        the enrollment key from the host dashboard"
            echo "  --name NAME         what the dashboards call this machine (default: its hostname)"
            echo "  --engine-port PORT  the port the engine listens on (default: 8000)"
            echo "  --no-gpu            skip Docker, the NVIDIA driver and toolkit, and the engine image"
            echo "  --pip-args ARGS     extra pip arguments for installing hostkit (e.g. --no-index --find-links DIR)"
            exit 0 ;;
        --) shift; break ;;
        *) usage_error "unknown option: $1" ;;
    esac
done
[ -n "$router" ] || usage_error "--router is required"
[ -n "$invite" ] || usage_error "--invite is required"
case $engine_port in
    ''|*[!0-9]*) usage_error "--engine-port must be a number" ;;
esac

[ "$(id -u)" = 0 ] || fail "run me as root (sudo $0 ...)"
repo=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$repo/ansible/site.yml" ] || fail "no ansible/site.yml beside this script: run it from a gpushare checkout"
if [ -r /etc/os-release ] && ! grep -q '^ID=ubuntu' /etc/os-release; then
    echo "setup-host.sh: warning: this is not Ubuntu; the playbook is made for Ubuntu 24.04" >&2
fi
command -v python3 >/dev/null || fail "python3 is missing: apt-get install python3"

work=$(mktemp -d "${TMPDIR:-/tmp}/gpushare-setup.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

if command -v ansible-playbook >/dev/null; then
    playbook=ansible-playbook
else
    echo "setup-host.sh: installing ansible-core $ANSIBLE_CORE_VERSION into a temporary virtualenv"
    if ! python3 -m venv "$work/venv" >/dev/null 2>&1; then
        rm -rf "$work/venv"
        command -v apt-get >/dev/null || fail "python3 cannot make a virtualenv; install python3-venv"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$work/venv" || fail "python3 cannot make a virtualenv"
    fi
    "$work/venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION" \
        || fail "could not install ansible-core $ANSIBLE_CORE_VERSION"
    playbook=$work/venv/bin/ansible-playbook
fi

# The enrollment key goes to Ansible in a file only root can read, never on a command line.
umask 077
cat >"$work/inventory.ini" <<EOF
[gpushare_hosts]
localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3
EOF
GPUSHARE_ROUTER=$router GPUSHARE_INVITE=$invite GPUSHARE_NAME=$name GPUSHARE_ENGINE_PORT=$engine_port \
GPUSHARE_GPU=$gpu GPUSHARE_PIP_ARGS=$pip_args python3 -c '
import json, os, sys
env = os.environ
values = {"gpushare_router": env["GPUSHARE_ROUTER"], "gpushare_enrollment_key": env["GPUSHARE_INVITE"],
          "gpushare_engine_port": int(env["GPUSHARE_ENGINE_PORT"]), "gpushare_gpu": env["GPUSHARE_GPU"] == "true",
          "hostkit_pip_args": env["GPUSHARE_PIP_ARGS"]}
if env["GPUSHARE_NAME"]:
    values["gpushare_host_name"] = env["GPUSHARE_NAME"]
json.dump(values, sys.stdout)
' >"$work/vars.json"

"$playbook" -i "$work/inventory.ini" -e "@$work/vars.json" "$@" "$repo/ansible/site.yml" \
    || fail "the playbook failed (see above); fix the cause and run me again: finished steps are skipped"
echo "setup-host.sh: done. Check the machine with 'hostkit check'; an admin approves it before it gets requests."

#!/bin/sh
# make test: every test, in two runs. Usage: scripts/run-tests.sh PYTHON [PYTEST_ARGS...]
# What needs no vLLM engine, browser or root runs first, on every core (each worker starts its own PostgreSQL
# and Redis); the engines, browsers and namespaces run after, one at a time, as their timings need.
# One run selecting nothing (PYTEST_ARGS naming a single file, say) is fine when the other ran tests.
python=$1
shift
"$python" -m pytest -n auto -m "not vllm and not browser and not root" "$@"
first=$?
if [ "$first" -ne 0 ] && [ "$first" -ne 5 ]; then
    exit "$first"
fi
"$python" -m pytest -m "vllm or browser or root" "$@"
second=$?
if [ "$second" -ne 0 ] && [ "$second" -ne 5 ]; then
    exit "$second"
fi
if [ "$first" -eq 5 ] && [ "$second" -eq 5 ]; then
    echo "run-tests: no tests selected" >&2
    exit 5
fi
exit 0

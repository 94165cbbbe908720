#!/usr/bin/env bash
# Train a linear-model job of jobs/ on its data, making the data first if the
# converted folders are missing:
#
#   jobs/linear.sh adult|news20|ctr [-o section.key=value ...]
#
# adult, news20: converts ../shared/data/<name>*.libsvm.gz into data/<name> and
# data/<name>-test (8 partitions each, so that workers share the queue).
# ctr: `python -m data_tools synth ctr` into data/ctr and data/ctr-test (same
# planted model, different rows). Ranks: MPIPS_NP (default 4: 1 scheduler,
# 1 server, 2 workers); MPIPS_RUN_ARGS: options of `mpips run` (see jobs/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
    echo "usage: jobs/linear.sh adult|news20|ctr [-o section.key=value ...]" >&2
    exit 2
fi
name=$1
shift
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SHARED=${MPIPS_SHARED_DATA:-../shared/data}

convert() {  # convert SOURCE OUTDIR ROWS_PER_PARTITION
    if [[ ! -f $2/manifest.json ]]; then
        [[ -f $1 ]] || { echo "error: $1 not found (set MPIPS_SHARED_DATA)" >&2; exit 2; }
        python -m data_tools convert "$1" -o "$2" --rows-per-partition "$3" --overwrite
    fi
}

case $name in
adult)
    convert "$SHARED/adult.train.libsvm.gz" data/adult 4096
    convert "$SHARED/adult.test.libsvm.gz" data/adult-test 4096 ;;
news20)
    convert "$SHARED/news20.binary.train.libsvm.gz" data/news20 1500
    convert "$SHARED/news20.binary.test.libsvm.gz" data/news20-test 1500 ;;
ctr)
    # One planted model (seed 7), rows drawn twice: the test rows come from
    # shards the training set does not have (rows 0..N vs a second seed would
    # change the model), so a larger set is cut in two.
    if [[ ! -f data/ctr/manifest.json || ! -f data/ctr-test/manifest.json ]]; then
        rm -rf data/ctr-all
        python -m data_tools synth ctr --rows "${CTR_ROWS:-600000}" --fields 20 \
            --vocab 100000 --seed 7 --rows-per-partition 50000 -o data/ctr-all
        python -m mpips.apps.linear.tools split data/ctr-all data/ctr data/ctr-test \
            --test-partitions 2
    fi ;;
*)
    echo "error: unknown job '$name' (adult, news20, ctr)" >&2; exit 2 ;;
esac

# shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
exec python -m mpips run -n "${MPIPS_NP:-4}" ${MPIPS_RUN_ARGS:-} "jobs/$name.toml" "$@"

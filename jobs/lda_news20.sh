#!/usr/bin/env bash
# LDA on 20 Newsgroups: convert the UCI bag of words (once) into HDF5
# partitions of 1000 documents, then train with 4 ranks (1 scheduler, 1 server,
# 2 workers; MPIPS_NP sets the count). Extra arguments go to `mpips train`,
# e.g. -o lda.topics=100
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${NP:-} ]]; then
    echo "jobs/lda_news20.sh: NP is deprecated, use MPIPS_NP=$NP" >&2
    MPIPS_NP=${MPIPS_NP:-$NP}
fi
if [ ! -f data/news20_lda/manifest.json ]; then
    python -m data_tools convert ../shared/data/news20.lda.docword.txt.gz -f uci-docword \
        --rows-per-partition 1000 -o data/news20_lda --overwrite
fi
# shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
exec timeout "${TIMEOUT:-1800}" python -m mpips run -n "${MPIPS_NP:-4}" ${MPIPS_RUN_ARGS:-} \
    jobs/lda_news20.toml "$@"

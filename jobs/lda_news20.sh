#!/usr/bin/env bash
# LDA on 20 Newsgroups: convert the UCI bag of words (once) into HDF5
# partitions of 1000 documents, then train with 4 ranks (1 scheduler, 1 server,
# 2 workers). Extra arguments go to `mpips train`, e.g. -o lda.topics=100
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/news20_lda/manifest.json ]; then
    python -m data_tools convert ../shared/data/news20.lda.docword.txt.gz -f uci-docword \
        --rows-per-partition 1000 -o data/news20_lda --overwrite
fi
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
exec timeout "${TIMEOUT:-1800}" mpiexec -n "${NP:-4}" --oversubscribe \
    python -m mpips train jobs/lda_news20.toml "$@"

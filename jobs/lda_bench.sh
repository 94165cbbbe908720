#!/usr/bin/env bash
# LDA on 20 Newsgroups, 20 and 100 topics: mpips (1 scheduler + 1 server +
# 2 workers) against gensim LdaMulticore and scikit-learn's online LDA, on the
# same split, scored by the same code (document-completion perplexity, UMass).
# Needs gensim and scikit-learn. Extra arguments go to the bench, e.g.
#   jobs/lda_bench.sh --topics 20 --sweeps 40
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/news20_lda/manifest.json ]; then
    python -m data_tools convert ../shared/data/news20.lda.docword.txt.gz -f uci-docword \
        --rows-per-partition 1000 -o data/news20_lda --overwrite
fi
exec timeout "${TIMEOUT:-3600}" python -m mpips.bench.lda_compare --data data/news20_lda \
    --job jobs/lda_news20.toml "$@"

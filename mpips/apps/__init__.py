"""Applications on the parameter server: sparse linear models, LDA, the
count-min sketch, block proximal gradient."""

"""Topic models: LDA by distributed collapsed Gibbs sampling (``app = "lda"``).

Modules: ``app`` (job section, data placement, the sweep loop, evaluation,
the merged model), ``model`` (the vectorised sampler and the metrics).
"""

from .app import LdaApp

__all__ = ["LdaApp"]

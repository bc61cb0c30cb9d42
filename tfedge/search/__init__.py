"""``tfedge search``: an Optuna study whose trials are recipes measured on the target.

``space`` (what a trial may pick), ``objectives`` (what a trial measures, the budgets),
``study`` (storage, sampler, workers, resume), ``pareto`` (the feasible front), ``runner``
(``search``, the facade).
"""

from tfedge.search.runner import SearchResult, search

__all__ = ["SearchResult", "search"]

"""`lcdata eval`: the long-context eval suites. Each suite is one `EvalSuite` class
(``base.py``) that registers itself in `SUITES` when defined; the built-in ones are in
``suites.py`` (with the suite cache), scoring and aggregation dispatch in ``score.py``, the
plots in ``plots.py``, the command in ``run.py``."""

from lcdata.evals import suites  # noqa: F401 - defining the suite classes registers them
from lcdata.evals.base import SUITES, EvalItem, EvalSuite, suite_class, suite_config_model

__all__ = ["SUITES", "EvalItem", "EvalSuite", "suite_class", "suite_config_model"]

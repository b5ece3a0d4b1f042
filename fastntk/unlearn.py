"""The public names of the unlearning update; the code lives in :mod:`fastntk.update` (docs/theory.md, docs/guide.md).

=========================  ==================================================================================
``unlearn``                one request (:mod:`fastntk.update.oneshot`): options -> plan -> route -> result
``Unlearner``              prepared state for a stream of requests (:mod:`fastntk.update.prepared`; CE:
                           :mod:`fastntk.update.prepared_ce`)
``UnlearnResult``          the result, with ``plan`` (:mod:`fastntk.update.result`)
``UnlearnOptions`` ...     the typed options (:mod:`fastntk.update.options`)
``match_ridge``            the matched ridge of an MSE model (:mod:`fastntk.update.ridge`)
``unlearning``             the NeurIPS 2023 challenge adapter (:mod:`fastntk.update.challenge`)
``FORMS``                  the MSE forms (:mod:`fastntk.update.forms`)
=========================  ==================================================================================
"""
from __future__ import annotations

from .update.challenge import unlearning
from .update.guard import HarmTolerance
from .update.inputs import targets as _targets  # noqa: F401  (kept for scripts that imported it from here)
from .update.newton import NewtonOptions
from .update.oneshot import unlearn
from .update.options import FORMS, JacobianOptions, SolverOptions, UnlearnOptions
from .update.prepared import Unlearner
from .update.result import UnlearnResult
from .update.ridge import match_ridge

__all__ = ["unlearn", "Unlearner", "UnlearnResult", "unlearning", "match_ridge", "FORMS", "UnlearnOptions", "SolverOptions",
           "JacobianOptions", "HarmTolerance", "NewtonOptions"]

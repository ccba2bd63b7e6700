r"""Checking a closed-form derivative: :func:`verify` and its results.

The engine lives in :mod:`jaxent._verify` (a public module named like the
function it exports is shadowed by it in ``jaxent``'s namespace); this module
keeps ``from jaxent.verify import verify, VerifyResult`` working.
"""

from jaxent._verify import AUTODIFF_TOL as AUTODIFF_TOL
from jaxent._verify import FD_STEP as FD_STEP
from jaxent._verify import FD_TOL as FD_TOL
from jaxent._verify import TAYLOR_MIN_SLOPE as TAYLOR_MIN_SLOPE
from jaxent._verify import CaseResult as CaseResult
from jaxent._verify import Check as Check
from jaxent._verify import LowPrecision as LowPrecision
from jaxent._verify import VerifyResult as VerifyResult
from jaxent._verify import cases_for as cases_for
from jaxent._verify import symbolic_gradient as symbolic_gradient
from jaxent._verify import verify as verify
from jaxent._verify import verify_all as verify_all

__all__ = [
    "AUTODIFF_TOL",
    "FD_STEP",
    "FD_TOL",
    "TAYLOR_MIN_SLOPE",
    "CaseResult",
    "Check",
    "LowPrecision",
    "VerifyResult",
    "cases_for",
    "symbolic_gradient",
    "verify",
    "verify_all",
]

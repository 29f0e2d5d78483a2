"""Exceptions that say which kind of failure happened, so that callers (and the ``eqgnn-*``
commands) can tell a user's mistake from a simulation that left physical territory.

===========================  ===================  ==================================================
exception                    base                 raised when
===========================  ===================  ==================================================
:class:`AtomsTooCloseError`  ``ValueError``       two atoms are closer than the calculator's
                                                  ``min_distance`` (overlapping atoms)
:class:`OutOfDomainError`    ``RuntimeError``     a structure is far outside the model's training
                                                  data (e.g. a pair of atoms much closer than any
                                                  pair of those elements it was trained on)
===========================  ===================  ==================================================

An input structure that raises either is a user error; the same error raised during MD or a
relaxation means the run went somewhere the model cannot follow.
"""

from __future__ import annotations


class AtomsTooCloseError(ValueError):
    """Two atoms are closer than the calculator's ``min_distance`` (Å)."""


class OutOfDomainError(RuntimeError):
    """A structure lies outside the model's training domain (see :mod:`ase_eqgnn.domain`)."""


__all__ = ["AtomsTooCloseError", "OutOfDomainError"]

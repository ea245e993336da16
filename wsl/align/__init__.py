"""Alignment: put networks of one weight space into one unit order.

* :func:`weight_matching` -- permutations that bring one network's weights
  closest to another's (Git Re-Basin's weight matching, for any ``WeightSpace``).
"""

from wsl.align.space_match import first_difference
from wsl.align.weight_matching import AlignResult, assign, weight_matching

__all__ = ["AlignResult", "assign", "first_difference", "weight_matching"]

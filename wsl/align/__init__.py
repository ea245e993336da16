"""Alignment: put networks of one weight space into one unit order.

* :func:`weight_matching` -- permutations that bring one network's weights
  closest to another's (Git Re-Basin's weight matching, for any ``WeightSpace``).
* :func:`activation_matching` -- the same, from correlations of unit activations on data.
* :func:`interpolate`, :func:`barrier` -- linear mode connectivity, with
  BatchNorm statistics recomputed on data (:func:`reset_batchnorm`).
* :mod:`wsl.align.merge` -- merge methods (mean, aligned mean, barycentre,
  task arithmetic, TIES, DARE, SLERP) behind one interface (:func:`make_method`).
"""

from wsl.align.activation import activation_matching
from wsl.align.lmc import Barrier, barrier, barrier_height, has_batchnorm, interpolate, reset_batchnorm
from wsl.align.merge import METHODS, make_method
from wsl.align.space_match import first_difference
from wsl.align.weight_matching import AlignResult, assign, weight_matching

__all__ = ["METHODS", "AlignResult", "activation_matching", "make_method", "Barrier", "assign", "barrier", "barrier_height", "first_difference", "has_batchnorm",
           "interpolate", "reset_batchnorm", "weight_matching"]

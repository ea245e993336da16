"""NeuMeta hypernetworks: one implicit function from weight coordinates to weight values.

:class:`NeuMeta` generates a whole network of a width family at any width
ratio (:meth:`NeuMeta.sample`); :func:`train_neumeta` fits it to a base
network; :func:`smooth` reorders units along a shortest path first;
:func:`load_hyper` reads a run directory written by ``wsl hyper train``.
"""

from wsl.hyper.coords import NetCoords, fourier, network_coords
from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
from wsl.hyper.prune import prune
from wsl.hyper.run import load_hyper, save_hyper
from wsl.hyper.smooth import smooth, total_variation
from wsl.hyper.train import HyperTrainConfig, train_neumeta

__all__ = ["HyperTrainConfig", "NetCoords", "NeuMeta", "NeuMetaConfig", "fourier", "load_hyper", "network_coords",
           "prune", "save_hyper", "smooth", "total_variation", "train_neumeta"]

"""What the methods are: the networks (`models`), the pure loss functions (`losses`), and the
registries of loss terms and of methods (`registry`: ACMR, MNS-GAN, MS2GAN, DSCMR).

Nothing here reads or writes a config file: a method's `configure` sets keys on the config it is
handed, and the run plan (`mscross.training.plan`) resolves a config against these registries.
"""

from mscross.methods.registry import LOSS_TERMS, METHODS, Method, Param, apply_params, get, names

__all__ = ["LOSS_TERMS", "METHODS", "Method", "Param", "apply_params", "get", "names"]

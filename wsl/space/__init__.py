"""The weight-space core: symmetry specs derived from any ``nn.Module``."""

from wsl.space.spec import (
    NODE_SLOTS,
    Block,
    Connection,
    Group,
    NodeParam,
    Site,
    TensorSpec,
    WeightSpaceSpec,
)
from wsl.space.weightspace import (
    WeightSpace,
    identity_permutation,
    invert_permutation,
    random_permutation,
)

__all__ = [
    "NODE_SLOTS", "Block", "Connection", "Group", "NodeParam", "Site", "TensorSpec", "WeightSpace",
    "WeightSpaceSpec", "identity_permutation", "invert_permutation", "random_permutation",
]

"""Meta-models on weights: dense equivariant layers and neural-graph networks."""

# ---------------------------------------------------------------- dense equivariant layers (NP, HNP, NFT)
from wsl.nn.dense_models import HNPNet, NFTNet, NPNet, mlp_head
from wsl.nn.hnp import HNPLinear
from wsl.nn.nft import BlockLinear, NFTLayer
from wsl.nn.np import EquivariantLinear, IOEmbedding, NPLinear
from wsl.nn.pooling import FeatureActivation, HNPPool, InvariantPool, MetaModelError, NPPool, resolve_space

__all__ = [
    "BlockLinear", "EquivariantLinear", "FeatureActivation", "HNPLinear", "HNPNet", "HNPPool", "IOEmbedding",
    "InvariantPool", "MetaModelError", "NFTLayer", "NFTNet", "NPLinear", "NPNet", "NPPool", "mlp_head",
    "resolve_space",
]
# ---------------------------------------------------------------- end dense

# ---------------------------------------------------------------- neural graphs (NG-GNN, NG-T) and heads
from wsl.nn.graph_encoding import EdgeEncoder, GraphEncoder, GraphEncodingError, NodeEncoder
from wsl.nn.graph_models import NGGNN, NGT, GraphMetaModel
from wsl.nn.heads import MLP, EquivariantHead, HeadError, InvariantHead, pool_nodes
from wsl.nn.ng_gnn import EdgeUpdate, GraphLayerError, NGGNNLayer, pna_aggregate
from wsl.nn.ng_t import NGTLayer, RelationalAttention

__all__ += [
    "EdgeEncoder", "GraphEncoder", "GraphEncodingError", "NodeEncoder", "NGGNN", "NGT", "GraphMetaModel", "MLP",
    "EquivariantHead", "HeadError", "InvariantHead", "pool_nodes", "EdgeUpdate", "GraphLayerError", "NGGNNLayer",
    "pna_aggregate", "NGTLayer", "RelationalAttention",
]
# ---------------------------------------------------------------- end neural graphs

"""symnmf: SymNMF-Net, classical SymNMF solvers, similarity graphs and clustering on symnmf_kernels.

    import symnmf
    net = symnmf.SymNMFNet(n_components=10).fit(X)           # X: similarity, dense or sparse
    result = symnmf.fit_net(X, 10)                            # the whole recipe: restarts, selection, finish
    labels = symnmf.SymNMF(10, solver="hals").fit_predict(features)
    symnmf.NeuralNMF(ranks=[9, 4, 2]).fit(X)                  # hierarchical NMF by backpropagation
    symnmf.AlternatingNMF(n_components=5).fit(Y)              # Li and Liang's alternating updates
    symnmf.SpecNet2(n_components=10).fit(features)            # spectral embedding by a network
    A = symnmf.similarity_graph(features)                     # sparse CSR kNN graph
    symnmf.metrics.accuracy(y, labels)

`symnmf.fitting` is the one fit path behind SymNMF, `symnmf cluster` and
`symnmf reproduce` (defaults, threads, progress).
"""
from . import datasets, fitting, metrics, solvers
from .alternating import AlternatingNMF
from .estimator import SymNMF
from .graph import similarity_graph
from .net import SymNMFNet, fit_net
from .neural_nmf import NeuralNMF
from .specnet2 import SpecNet2

__version__ = "0.1.0"
__all__ = ["SymNMFNet", "fit_net", "SymNMF", "NeuralNMF", "AlternatingNMF", "SpecNet2", "similarity_graph", "metrics",
           "solvers", "datasets", "fitting"]

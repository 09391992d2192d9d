"""symnmf: SymNMF-Net, classical SymNMF solvers, similarity graphs and clustering on symnmf_kernels."""
__version__ = "0.1.0"

from .. import reference


def sym_loss(X, U):
    return reference.sym_loss(X, U)

from .. import reference


def symnmf_block(U, P, lam):
    return reference.symnmf_block(U, P, lam)

from .. import reference


def spd_inverse(*args, **kwargs):
    return reference.spd_inverse(*args, **kwargs)

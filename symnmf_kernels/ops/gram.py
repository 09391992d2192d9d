from .. import reference


def gram(*args, **kwargs):
    return reference.gram(*args, **kwargs)

# A trivial kernel so a broken Cython toolchain shows up at install time, not at run time.
def compiled() -> bool:
    return True

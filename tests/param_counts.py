"""Hand-derived parameter counts from the spec, and a helper that prints measured ones."""


def separable(cin, cout, k=3):
    """Depthwise kxk (no bias) + BN, pointwise 1x1 (no bias) + BN."""
    return cin * k * k + 2 * cin + cin * cout + 2 * cout


def conv_bn(cin, cout, k):
    return cin * cout * k * k + 2 * cout


def print_param_counts(modules):
    """Print and return {name: parameter count} for a dict of modules (shown with pytest -s)."""
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    for name, n in counts.items():
        print(f"{name:40s} {n:>12,d}  ({n / 1e6:.3f} M)")
    return counts

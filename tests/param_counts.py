"""A helper that prints measured parameter counts (shown with pytest -s)."""


def print_param_counts(modules):
    """Print and return {name: parameter count} for a dict of modules (shown with pytest -s)."""
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    for name, n in counts.items():
        print(f"{name:40s} {n:>12,d}  ({n / 1e6:.3f} M)")
    return counts

"""What the server-rendered SVG charts share (the usage charts, the ops dashboard's): a round
top for the axis, compact axis labels, and geometry as strings."""


def axis_max(highest: int, *, smallest: int = 1) -> int:
    """The first of smallest, 2 x smallest, 5 x smallest, 10 x smallest, ... at or above
    `highest` (smallest a power of ten)."""
    scale = smallest
    while True:
        for step in (1, 2, 5):
            if highest <= step * scale:
                return step * scale
        scale *= 10


def compact(value: int) -> str:
    """Axis labels: 500, 2.5k, 40k, 1.5M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return str(value)


def px(value: float) -> str:
    # Strings, so the template never localises a number inside SVG geometry.
    return f"{value:.2f}".rstrip("0").rstrip(".")

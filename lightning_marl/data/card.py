"""The picture on a dataset card: a histogram of episode returns (``dataset info`` writes it).

matplotlib is optional (the ``plot`` extra) and imported only here, with the Agg backend.

Example:
    >>> from lightning_marl.data.dataset import load_dataset
    >>> ds = load_dataset("path/to/dataset")            # doctest: +SKIP
    >>> write_returns_histogram(ds, "returns.png")      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from lightning_marl.data.dataset import episode_returns
from lightning_marl.errors import DatasetError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DatasetError(
            "writing the returns histogram needs matplotlib: pip install 'lightning_marl[plot]' "
            "(or pass --no-plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_returns_histogram(dataset, path, bins: int = 40) -> Path:
    """Write a PNG histogram of ``dataset``'s episode returns to ``path``, with the reference
    returns (random, expert) drawn as vertical lines where the metadata has them."""
    plt = _pyplot()
    path = Path(path)
    returns = episode_returns(dataset.arrays).numpy()
    meta = dataset.metadata
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        axes.hist(returns, bins=min(bins, max(1, len(set(returns.tolist())))), color="#4878a8", edgecolor="white")
        for name, colour in (("random", "#c44e52"), ("expert", "#55a868")):
            value = (meta.get("reference_returns") or {}).get(name)
            if value is not None:
                axes.axvline(value, color=colour, linestyle="--", label=f"{name} reference {value:.3g}")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize="small")
        env = meta.get("env") or {}
        title = f"{meta.get('id', path.parent.name)}: {meta.get('quality') or 'unlabelled'}"
        if env.get("name"):
            title += f" ({env.get('name')} {env.get('task') or ''})".rstrip()
        axes.set_title(title, fontsize="medium")
        axes.set_xlabel(f"episode return (team reward; {len(returns)} episodes)")
        axes.set_ylabel("episodes")
        axes.yaxis.get_major_locator().set_params(integer=True)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


def plot_for_info(dataset, plot: str | None = None, no_plot: bool = False) -> Path | None:
    """What ``dataset info`` does about the histogram: write it to ``plot`` or <dataset>/returns.png.

    Without matplotlib (or with a read-only dataset directory) and no explicit ``plot``, it says
    so on stderr and carries on; an explicit ``plot`` path that cannot be written is an error.
    """
    import sys

    if no_plot:
        return None
    target = Path(plot) if plot else Path(dataset.path) / "returns.png"
    try:
        written = write_returns_histogram(dataset, target)
    except (DatasetError, OSError) as error:
        if plot:
            raise DatasetError(f"cannot write the returns histogram to {target}: {error}") from None
        print(f"  histogram      not written: {error}", file=sys.stderr)
        return None
    print(f"  histogram      {written}")
    return written

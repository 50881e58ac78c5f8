"""The report's figures (seaborn): Fig. 3 analogue, all attacks, familiar vs novel error, training curves.

Each figure carries a footer naming the command that regenerates it, the dataset, the device and the
commit, so a PNG that travels alone still says where it came from. Written as PNG and PDF, atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless machines (CI, GPU nodes) have no display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from robustcaps.io import atomic_write_bytes  # noqa: E402
from robustcaps.paper_results import fig3_frame, table2_frame  # noqa: E402
from robustcaps.report import columns as col  # noqa: E402
from robustcaps.report.tables import PAPER_ATTACKS, family_of, with_protocol  # noqa: E402
from robustcaps.uncertainty import wilson  # noqa: E402

FAMILY_COLOURS = {
    "capsnet": "tab:blue",
    "cnn": "tab:orange",
    "dynamic": "tab:green",
    "self-routing": "tab:purple",
}


def save_figure(fig: plt.Figure, stem: Path, footer: str) -> list[Path]:
    """Write `stem`.png and `stem`.pdf with the provenance footer; returns both paths."""
    fig.text(0.01, 0.005, footer, fontsize=6, ha="left", va="bottom", wrap=True, color="0.3")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    paths = []
    # no creation date in the PDF: the same numbers give the same bytes, and a rerun leaves git clean
    for suffix, kwargs in ((".png", {"dpi": 130}), (".pdf", {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        # bbox "tight" keeps legends that seaborn places outside the axes inside the file.
        fig.savefig(buffer, format=suffix[1:], bbox_inches="tight", **kwargs)
        paths.append(atomic_write_bytes(stem.with_suffix(suffix), buffer.getvalue()))
    plt.close(fig)
    return paths


def _colour(model: str) -> str:
    return FAMILY_COLOURS.get(family_of(model), "0.4")


def _wilson(values: pd.Series, n: pd.Series) -> tuple[list[float], list[float]]:
    bounds = [wilson(v, int(k)) for v, k in zip(values, n, strict=True)]
    return [b[0] for b in bounds], [b[1] for b in bounds]


def _band(ax: plt.Axes, line: pd.DataFrame, colour: str) -> None:
    """The 95% Wilson interval of each point on n examples as a band (for a targeted success rate averaged
    over the targets, n examples is what is independent, so the band is approximate there)."""
    line = line.sort_values(col.EPS_STD)
    low, high = _wilson(line[col.VALUE], line[col.N])
    ax.fill_between(line[col.EPS_STD], low, high, color=colour, alpha=0.15, linewidth=0)


def plot_fig3(summary: pd.DataFrame, stem: Path, footer: str) -> list[Path]:
    """Accuracy (untargeted) and success rate (targeted) against ε for FGSM and BIM, each point with its 95%
    interval as a band, paper points overlaid."""
    white_box = (summary[col.SOURCE] == "") & (summary[col.ROLE] == "sweep")
    rows = summary[summary[col.ATTACK].isin(PAPER_ATTACKS) & white_box]
    paper = fig3_frame()
    fig, axes = plt.subplots(2, 2, figsize=(9, 7), sharex=True, sharey=True, squeeze=False)
    legend = {}  # label -> handle over every panel: one legend beside them, however many models
    for i, targeted in enumerate((False, True)):
        for j, attack in enumerate(PAPER_ATTACKS):
            ax = axes[i, j]
            ours = rows[(rows[col.ATTACK] == attack) & (rows[col.TARGETED] == targeted)]
            ours = ours.groupby([col.MODEL, col.EPS_STD], as_index=False).agg(
                value=(col.VALUE, "mean"), n=(col.N, "min")
            )
            for model, line in ours.groupby(col.MODEL):
                _band(ax, line, _colour(model))
                sns.lineplot(
                    data=line,
                    x=col.EPS_STD,
                    y=col.VALUE,
                    ax=ax,
                    marker="o",
                    color=_colour(model),
                    label=f"{model} (ours)",
                )
            points = paper[(paper[col.ATTACK] == attack) & (paper[col.TARGETED] == targeted)]
            for family, group in points.groupby(col.FAMILY):
                ax.scatter(
                    group[col.EPS_STD],
                    group[col.VALUE],
                    marker="*",
                    s=140,
                    edgecolor="black",
                    color=FAMILY_COLOURS[family],
                    label=f"{family} (paper)",
                    zorder=3,
                )
            metric = "targeted success rate" if targeted else "accuracy"
            ax.set(
                title=f"{attack.upper()} {'targeted' if targeted else 'untargeted'}",
                xlabel="ε (standardised input units)",
                ylabel=metric,
                ylim=(-0.02, 1.02),
            )
            legend |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
            if ax.get_legend() is not None:
                ax.get_legend().remove()
    legend_beside(fig, legend)
    fig.suptitle("White-box attacks (cf. HSF18 Fig. 3; 95% intervals as bands)")
    return save_figure(fig, stem, footer)


def plot_all_attacks(summary: pd.DataFrame, stem: Path, footer: str) -> list[Path]:
    """Untargeted accuracy against ε for every attack (including transfer and the vote attack) and model,
    each point with its 95% Wilson interval as a band."""
    chosen = (~summary[col.TARGETED]) & (summary[col.ROLE] == col.SWEEP) & (summary[col.ATTACK] != col.CLEAN)
    rows = summary[chosen & (summary[col.METRIC] == col.ACCURACY)].copy()
    rows[col.ATTACK] = [
        a if not s else f"{a} (from {s})" for a, s in zip(rows[col.ATTACK], rows[col.SOURCE], strict=True)
    ]
    rows = rows.groupby([col.MODEL, col.ATTACK, col.EPS_STD], as_index=False, sort=False).agg(
        value=(col.VALUE, "mean"), n=(col.N, "min")
    )
    attacks = list(dict.fromkeys(rows[col.ATTACK]))
    palette = dict(zip(attacks, sns.color_palette(n_colors=len(attacks)), strict=True))
    grid = sns.relplot(
        data=rows,
        x=col.EPS_STD,
        y=col.VALUE,
        hue=col.ATTACK,
        col=col.MODEL,
        kind="line",
        marker="o",
        palette=palette,
        errorbar=None,
        height=3.6,
        aspect=1.1,
        facet_kws={"ylim": (-0.02, 1.02)},
    )
    for model, ax in grid.axes_dict.items():
        for attack, line in rows[rows[col.MODEL] == model].groupby(col.ATTACK):
            _band(ax, line, palette[attack])
    grid.set_axis_labels("ε (standardised input units)", "accuracy")
    sns.move_legend(grid, "upper left", bbox_to_anchor=(1.0, 0.9))  # beside the axes, not over them
    grid.figure.suptitle("Untargeted accuracy under every attack (95% intervals as bands)", y=1.0)
    return save_figure(grid.figure, stem, footer)


def plot_familiar_novel(viewpoint: pd.DataFrame, stem: Path, footer: str) -> list[Path]:
    """Novel against familiar error per split and model, ours (with 95% Wilson error bars) and the paper's
    Table 2; every reverse match too (the CNN stopped at a capsule network's familiar error: its X sits
    beside that network's point)."""
    viewpoint = with_protocol(viewpoint)
    stopped, paper = "ours, CNN stopped at capsules' familiar", "paper (smallNORB)"
    markers = {"ours": "o", stopped: "X", paper: "s"}  # fixed: seaborn would pick them per panel
    source = viewpoint[col.PROTOCOL].map({"paper": "ours", "reverse": stopped})
    ours = viewpoint.assign(family=viewpoint[col.MODEL].map(family_of), source=source)
    points = pd.concat([ours, table2_frame().assign(source=paper)], ignore_index=True)
    splits = sorted(points[col.SPLIT].unique())
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 4.2), squeeze=False)
    legend = {}  # label -> handle, over every panel (a reverse match may exist on one split only)
    for ax, split in zip(axes[0], splits, strict=True):
        group = points[points[col.SPLIT] == split]
        sns.scatterplot(
            data=group,
            x=col.FAMILIAR_ERROR,
            y=col.NOVEL_ERROR,
            hue=col.FAMILY,
            style="source",
            markers={k: v for k, v in markers.items() if k in set(group[col.SOURCE])},
            palette=FAMILY_COLOURS,
            s=110,
            ax=ax,
        )
        ours_here = group[group[col.SOURCE] != paper]
        for family, rows in ours_here.groupby(
            col.FAMILY
        ):  # our points' 95% Wilson intervals (the paper's: none)
            x_low, x_high = _wilson(rows[col.FAMILIAR_ERROR], rows[col.N_FAMILIAR])
            y_low, y_high = _wilson(rows[col.NOVEL_ERROR], rows[col.N_NOVEL])
            x, y = rows[col.FAMILIAR_ERROR].to_numpy(), rows[col.NOVEL_ERROR].to_numpy()
            ax.errorbar(
                x,
                y,
                xerr=[x - x_low, [h - v for h, v in zip(x_high, x, strict=True)]],
                yerr=[y - y_low, [h - v for h, v in zip(y_high, y, strict=True)]],
                fmt="none",
                ecolor=FAMILY_COLOURS.get(family, "0.4"),
                elinewidth=1,
                capsize=2,
                zorder=1,
            )
        top = max(group[[col.FAMILIAR_ERROR, col.NOVEL_ERROR]].max().max() * 1.15, 0.05)
        ax.plot([0, top], [0, top], color="0.7", linestyle="--", linewidth=1, label="novel = familiar")
        ax.set(
            title=f"{split} split",
            xlim=(0, top),
            ylim=(0, top),
            xlabel="familiar-viewpoint error",
            ylabel="novel-viewpoint error",
        )
        legend |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        ax.get_legend().remove()
    legend_beside(fig, legend)
    fig.suptitle("Viewpoint generalisation at matched familiar error (cf. HSF18 Table 2)")
    return save_figure(fig, stem, footer)


def legend_beside(fig, legend: dict) -> None:
    """One legend for every panel, right of them: inside an axes it covers points wherever "best" puts it."""
    fig.legend(
        legend.values(),
        legend.keys(),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        frameon=False,
    )


def plot_training(training: pd.DataFrame, stem: Path, footer: str) -> list[Path]:
    """Every run's validation error against epoch and against wall seconds (where a plateau shows), and its
    training error against epoch: one row per split, one line per model."""
    x_axes = ((col.EPOCH, col.VAL_ERROR), (col.SECONDS, col.VAL_ERROR), (col.EPOCH, col.TRAIN_ERROR))
    splits = list(dict.fromkeys(training[col.SPLIT])) if col.SPLIT in training else [None]
    fig, axes = plt.subplots(len(splits), len(x_axes), figsize=(4.2 * len(x_axes), 3.0 * len(splits)))
    axes = [axes] if len(splits) == 1 else axes
    for row, split in zip(axes, splits, strict=True):
        runs = training if split is None else training[training[col.SPLIT] == split]
        for ax, (x, y) in zip(row, x_axes, strict=True):
            recorded = runs.dropna(subset=[y]) if {x, y} <= set(runs) else runs.iloc[:0]
            for model, line in recorded.groupby(col.MODEL, sort=False):
                ax.plot(line[x], line[y], marker="o", markersize=3, color=_colour(model), label=model)
                if y == col.VAL_ERROR:  # the val-chosen checkpoint: the epochs after it show the plateau
                    best = line.loc[line[y].idxmin()]
                    ax.plot(best[x], best[y], marker="*", markersize=11, color=_colour(model))
            if not ax.lines:  # e.g. no validation part, or a CSV from before wall seconds were logged
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            title = y.replace("_", " ") + (f", {split} split" if split else "")
            ax.set(title=title, xlabel="wall seconds" if x == col.SECONDS else x, ylabel="error")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle("Training curves", y=1.0)
    return save_figure(fig, stem, footer)

"""``motex-db series``: time-resolved series: list them, decompose them (PCA, NMF, frame correlations)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer

from motex_db.cli import output
from motex_db.cli.app import app, engine_of
from motex_db.cli.output import console

series_app = typer.Typer(help="Time-resolved series: list, decompose (PCA, NMF, frame correlations).", no_args_is_help=True)
app.add_typer(series_app, name="series")

# Above this many frames the weights are summarised instead of listed frame by frame.
_WEIGHT_ROWS = 30


@series_app.command("list")
def series_list(ctx: typer.Context) -> None:
    """List the series: frames, time range, shared r range, decompositions."""
    from motex_db.series import series_overview

    output.print_frame(series_overview(engine_of(ctx)), title="series",
                       empty="no series yet: add frames with data add FILES... --series NAME.")


@series_app.command("decompose")
def series_decompose(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The series."),
    components: str = typer.Option(
        "auto", "--components", help="Number of NMF components, or auto: the fewest PCA components explaining 99 %."
    ),
    rmin: Optional[float] = typer.Option(None, "--rmin", help="Start of the r range in Å (default: where every frame starts)."),
    rmax: Optional[float] = typer.Option(None, "--rmax", help="End of the r range in Å (default: where the first frame to end ends)."),
) -> None:
    """PCA (how many components), NMF (the components, each stored as a dataset, and their weight in each frame)
    and the frames' correlation matrix. The identical decomposition again returns the stored one."""
    from motex_db.series import AUTO_EXPLAINED, decompose_series

    result = decompose_series(engine_of(ctx), name, components, rmin, rmax)
    if result.created:
        console.print(f"decomposed series '{name}' (decomposition {result.decomposition_id}): {len(result.frame_ids)} frames, "
                      f"r {result.r_min:g}-{result.r_max:g} Å ({result.n_points} points).")
    else:
        console.print(f"series '{name}' was already decomposed this way: decomposition {result.decomposition_id} "
                      f"({len(result.frame_ids)} frames, r {result.r_min:g}-{result.r_max:g} Å); nothing new stored.")
    if result.interpolated:
        shown = ", ".join(result.interpolated[:5]) + (f" and {len(result.interpolated) - 5} more" if len(result.interpolated) > 5 else "")
        console.print(f"{len(result.interpolated)} frames interpolated onto the first frame's r grid: {shown}.")

    ratio, cumulative = result.explained_variance, result.cumulative_variance
    shown = min(len(ratio), max(5, result.n_components + 3))  # all of them: series_decomposition.explained_variance
    output.print_rows(["component", "explained", "cumulative"],
                      [(i + 1, f"{ratio[i]:.4%}", f"{cumulative[i]:.4%}") for i in range(shown)],
                      title="PCA explained variance (uncentred frames)")
    if result.components_requested == "auto":
        console.print(f"components: {result.n_components} (auto: the fewest explaining {AUTO_EXPLAINED:.0%} of the variance).")
    else:
        console.print(f"components: {result.n_components} (asked for; PCA's {AUTO_EXPLAINED:.0%} rule would give "
                      f"{int(np.searchsorted(cumulative, AUTO_EXPLAINED - 1e-12) + 1)}).")
    converged = "" if result.nmf_converged is not False else f" (stopped after {result.nmf_iterations} iterations)"
    console.print(f"NMF on G + {result.shift:.4g}: relative error {result.nmf_relative_error:.4f}{converged}; "
                  f"weights per frame add up to 1 within {result.closure:.3g}.")
    console.print("component datasets (fit, train and explain accept them like any dataset): "
                  + ", ".join(f"{k + 1}: {n}" for k, n in enumerate(result.component_names)))

    table = result.weights_frame()
    columns = [f"c{k + 1}" for k in range(result.n_components)]
    if len(table) <= _WEIGHT_ROWS:
        output.print_rows(["frame", "time (s)"] + [f"w{k + 1}" for k in range(result.n_components)],
                          [(row.frame, row.time, *(f"{getattr(row, c):.4f}" for c in columns)) for row in table.itertuples()],
                          title="NMF weight of each component per frame")
    else:
        rows = []
        for k, column in enumerate(columns):
            values = table[column].to_numpy(dtype=float)
            low, high = int(np.nanargmin(values)), int(np.nanargmax(values))
            rows.append((k + 1, f"{values[0]:.4f}", f"{values[-1]:.4f}",
                         f"{values[low]:.4f} ({table.frame[low]})", f"{values[high]:.4f} ({table.frame[high]})"))
        output.print_rows(["component", "first frame", "last frame", "lowest", "highest"], rows,
                          title=f"NMF weights over {len(table)} frames (all of them: the component_weight table)")
    off = result.correlation[~np.eye(len(result.correlation), dtype=bool)]
    if off.size and np.isfinite(off).any():
        console.print(f"frame correlations (Pearson): from {np.nanmin(off):.4f} to {np.nanmax(off):.4f} between frames.")

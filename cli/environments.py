"""Atom environments on the command line: ``structure show`` and ``structure check``."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer

from motex_db.cli import output
from motex_db.cli.app import MLFLOW_HELP, engine_of, structure_app
from motex_db.cli.output import console


def _vector(distances, neighbours) -> str:
    return " ".join(f"{d:.3f}{n}" for d, n in zip(distances, neighbours))


@structure_app.command("show")
def structure_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The structure's name."),
    k: Optional[int] = typer.Option(None, "--k", help="Neighbours per atom (default: as stored, 12 or fewer for small models)."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Vectors equal within this many Å are one class (default 0.01)."),
    all_atoms: bool = typer.Option(False, "--all", help="Also list the classes of the atoms that are not permutable."),
) -> None:
    """A starting model's atom environments: its permutable atoms grouped into classes of equal k-NN distance vectors.

    Atoms of one class are images of each other under the model's symmetry (to within the tolerance):
    they make the same pair distances, so they should come out with the same contribution.
    """
    from motex_db.environments import class_summary, model_environments

    model, environments = model_environments(engine_of(ctx), name, k, tolerance)
    elements = np.asarray(model.elements)
    permutable = np.isin(elements, list(model.permutable_elements))
    number = np.cumsum(permutable)  # 1-based permutable index, as in atom_contribution.atom_index
    members = np.arange(len(elements)) if all_atoms else np.flatnonzero(permutable)
    rows = []
    for entry in class_summary(elements, environments, members):
        atoms = entry["atoms"]
        shown = (f"{a + 1}" if not permutable[a] else f"{a + 1} (#{number[a]})" for a in atoms) if all_atoms \
            else (str(number[a]) for a in atoms)
        rows.append([entry["class"], entry["element"], len(atoms), ", ".join(shown),
                     _vector(entry["distances"], entry["neighbours"]), f"{entry['spread']:.4f}"])
    n_classes = len(rows)
    which = "atoms" if all_atoms else "permutable atoms"
    console.print(
        f"structure '{model.name}': {len(members)} {which} in {n_classes} environment classes "
        f"(k = {environments.k}, tolerance {environments.tolerance:g} Å)."
    )
    atoms_header = "atoms (file order; #permutable index)" if all_atoms else "permutable atoms"
    output.print_rows(
        ["class", "element", "n", atoms_header, "k-NN distances (Å) and neighbour species", "spread (Å)"], rows)


@structure_app.command("check")
def structure_check(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The structure to check."),
    library: Optional[str] = typer.Option(None, "--library", help="Train on this structure library's crystals (else on the record's starting models)."),
    k: int = typer.Option(12, "--k", help="Neighbours per atom in the distance vector."),
    threshold: float = typer.Option(0.05, "--threshold", help="Flag an atom when its labelled element's probability is below this."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the classifier."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the flagged atoms as CSV: atom_index,element,predicted,probability."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
) -> None:
    """The k-NN atom-type check: flag atoms whose labelled element an XGBoost classifier of k-NN distances finds unlikely.

    Trained on a structure library's crystals (--library) or on the starting models in the record; the
    structure's own atoms are predicted out-of-fold, never by a model that saw them. Prints the held-out
    confusion matrix per element and the accuracy for k = 1..10. Tracked in MLflow; the same check again is reused.
    """
    from motex_db.atomtypes import check_structure
    from motex_db.errors import InputError

    if not 0 < threshold < 1:
        raise InputError(f"--threshold must lie between 0 and 1, not {threshold}.")
    engine = engine_of(ctx)
    with output.stage_progress("models") as progress:
        outcome = check_structure(engine, name, library, k, seed, mlflow_uri, on_progress=progress)
    flagged = outcome.flagged(threshold)
    rows = [[int(i) + 1, outcome.elements[i], outcome.predicted[i], round(float(outcome.probability[i]), 4)]
            for i in flagged]
    if as_csv:
        output.write_csv(["atom_index", "element", "predicted", "probability"], rows)
        return
    metrics = outcome.metrics
    source = f"library '{library}'" if library else "the record's starting models"
    reused = "" if outcome.created else " (stored check reused)"
    console.print(
        f"atom-type check of '{name}'{reused}: classifier of element from {k} nearest-neighbour distances, "
        f"trained on {source} ({metrics['n_structures']} structures, {metrics['n_training_atoms']} atoms)."
    )
    console.print(f"held-out accuracy {metrics['accuracy']:.3f} ({metrics['held_out']}).")
    unjudged = len(outcome.elements) - metrics["n_judged"]
    if unjudged:
        console.print(
            f"{unjudged} of {len(outcome.elements)} atoms are not judged: their {k} nearest neighbours reach past the "
            "model's edge, and bulk crystals say nothing about such atoms (a smaller --k judges more)."
        )
    elements = metrics["elements"]
    output.print_rows(["labelled \\ predicted", *elements],
                      [[e, *counts] for e, counts in zip(elements, metrics["confusion"])],
                      title="held-out confusion matrix")
    output.print_rows(["k", "held-out accuracy"],
                      [[int(kk), round(acc, 3)] for kk, acc in metrics["accuracy_by_k"].items()])
    if rows:
        label_p = [round(float(outcome.label_probability[i]), 4) for i in flagged]
        output.print_rows(
            ["atom (file order)", "labelled", "predicted", "p(predicted)", "p(labelled)"],
            [[*row, p] for row, p in zip(rows, label_p)],
            title=f"{len(rows)} atoms whose label looks unlikely (p(labelled) < {threshold:g})",
        )
    else:
        console.print(f"no atom flagged: every labelled element has probability >= {threshold:g}.")
    if outcome.mlflow_run_id:
        console.print(f"MLflow run {outcome.mlflow_run_id}.")

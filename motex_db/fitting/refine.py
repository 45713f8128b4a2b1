"""A detailed diffpy.srfit refinement of one motif (``motex-db refine``).

The batched fitter is built for throughput; this is for the one motif a
scientist cares about (the best sampled motif, the extracted motif): a srfit
``FitRecipe`` on our :class:`~motex_db.pdf.srfit.ClusterPDFGenerator`, with the
published zoom restraints, refined by scipy's ``leastsq`` and reported with
srfit's uncertainties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import leastsq
from sqlmodel import Session

from motex_db.catalogue import membership_matrix
from motex_db.datasets import get_dataset
from motex_db.errors import InputError
from motex_db.fitting.settings import FitSettings
from motex_db.models import Motif, StartingModel
from motex_db.pdf.srfit import build_cluster_recipe
from motex_db.structures import permutable_flags

FREE_WORDS = {"scale", "zoom", "zoom3", "biso", "delta2"}


@dataclass
class Refinement:
    """The outcome of :func:`refine_motif`: values, uncertainties, curves."""

    motif_id: int
    mask: str
    structure: str
    dataset: str
    elements: list[str]
    positions: np.ndarray  # the motif's atoms, Å, before zoom
    free: list[str]
    values: dict[str, float]
    uncertainties: dict[str, float]
    rwp: float
    r: np.ndarray
    g_obs: np.ndarray
    g_calc: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def difference(self) -> np.ndarray:
        return self.g_obs - self.g_calc


def motif_atoms(model: StartingModel, mask: str) -> tuple[list[str], np.ndarray]:
    """Elements and positions (Å) of a motif's atoms: kept permutable atoms and their bonded atoms."""
    flags = permutable_flags(model.elements, model.permutable_elements)
    membership = membership_matrix(model.positions, flags, model.bond_cutoff)
    kept = np.frombuffer(mask.encode(), dtype=np.uint8) == ord("1")
    present = membership[:, kept].any(axis=1)
    return [e for e, p in zip(model.elements, present) if p], model.positions[present]


def _srfit_free(free: list[str], elements: list[str]) -> tuple[str, list[str]]:
    zoom_mode = "xyz" if "zoom3" in free else "iso"
    names = []
    for word in free:
        if word == "zoom3":
            names += ["zoomx", "zoomy", "zoomz"]
        elif word == "biso":
            names += [f"biso_{el}" for el in sorted(set(elements))]
        elif word.startswith("biso_"):
            if word[5:] not in elements:
                raise InputError(f"--free {word}: the motif has no {word[5:]} atoms.")
            names.append(word)
        elif word in FREE_WORDS:
            names.append(word)
        else:
            raise InputError(f"--free knows scale, zoom, zoom3, biso, biso_EL and delta2, not '{word}'.")
    if "zoom" in free and "zoom3" in free:
        raise InputError("--free takes zoom or zoom3, not both.")
    return zoom_mode, names


def refine_motif(engine, motif_id: int, dataset: str, settings: FitSettings, free: list[str]) -> Refinement:
    """Refine one motif against a dataset with srfit; ``settings`` give the calculation and start values."""
    with Session(engine) as session:
        motif = session.get(Motif, motif_id)
        if motif is None:
            raise InputError(f"there is no motif with id {motif_id}.")
        model = session.get(StartingModel, motif.starting_model_id)
        data = get_dataset(session, dataset)
    settings = settings.resolved(data.meta or {})
    elements, positions = motif_atoms(model, motif.mask)
    zoom_mode, names = _srfit_free(free, elements)
    in_range = (data.r >= settings.rmin) & (data.r <= settings.rmax)
    if in_range.sum() < 10:
        raise InputError(f"fewer than 10 points of dataset '{dataset}' lie in {settings.rmin:g}-{settings.rmax:g} Å.")
    if len(elements) < 2:
        raise InputError(f"motif {motif_id} has {len(elements)} atom: a PDF needs at least two.")
    r, g_obs = data.r[in_range], data.g[in_range]
    params = settings.pdf_parameters()
    recipe = build_cluster_recipe(
        elements, positions, r, g_obs, params, zoom_mode=zoom_mode, free=names,
        zoom_bounds=tuple(settings.zoom_bounds), zoom_sigma=settings.zoom_sigma, scale=settings.scale_start,
    )
    for name in recipe.names:
        if name.startswith("zoom"):
            recipe.get(name).setValue(settings.zoom_start)
    # the scale is linear: start it at its best value for the start model
    g_start = recipe.pdf.evaluate()
    if not np.any(g_start):
        raise InputError(f"motif {motif_id} has no pair distances in the fit range: nothing to refine.")
    if "scale" in recipe.names:
        recipe.scale.setValue(recipe.scale.value * float(g_obs @ g_start) / float(g_start @ g_start))
    solution, covariance, *_ = leastsq(recipe.residual, recipe.values, full_output=True)
    recipe.residual(solution)
    g_calc = recipe.pdf.evaluate()
    rwp = float(np.sqrt(np.sum((g_obs - g_calc) ** 2) / np.sum(g_obs**2)))
    from diffpy.srfit.fitbase import FitResults

    results = FitResults(recipe)
    values = {n: float(v) for n, v in zip(results.varnames, results.varvals)}
    uncertainties = {n: float(u) for n, u in zip(results.varnames, results.varunc)}
    return Refinement(
        motif_id=motif_id, mask=motif.mask, structure=model.name, dataset=data.name, elements=elements,
        positions=positions, free=names, values=values, uncertainties=uncertainties, rwp=rwp,
        r=r, g_obs=g_obs, g_calc=np.asarray(g_calc, dtype=float), settings=settings.to_dict(),
    )

"""What a report shows, read from the record in a few bulk queries.

A *run* is one starting structure fitted to one dataset with one fit
configuration, with its latest trained model and that model's atom
contributions when there are any. The report has:

- per-run sections for the chosen datasets (by default every dataset that is
  not a frame of a time-resolved series: a series of 300 frames is shown as a
  series, not as 300 sections);
- a comparison across starting structures for each such dataset that several
  structures were fitted to;
- a section per time-resolved series (frames ordered by time) that was fitted or
  decomposed (its latest PCA/NMF decomposition).

Nothing here computes anything new: :mod:`motex_db.reports.recompute` does that.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

import motex_db
from motex_db.datasets import get_dataset, get_series_frames
from motex_db.db import safe_url
from motex_db.errors import InputError
from motex_db.fitting.imported import IMPORT_RECIPE
from motex_db.fitting.refine import motif_atoms
from motex_db.learning import EXTRACTED_SAMPLER_PREFIX
from motex_db.models import (
    AtomContribution, AtomEnvironment, Dataset, FitConfig, FitResult, Motif, StartingModel, TrainedModel,
)
from motex_db.series import Decomposition, latest_decomposition
from motex_db.structures import get_starting_model, permutable_flags

__all__ = ["MotifFit", "Run", "SeriesFrame", "Series", "ReportData", "gather_report", "composition", "extracted_composition", "masks_of"]



@dataclass(frozen=True)
class MotifFit:
    """One motif's fit: which atoms (mask, 1 per kept permutable atom), Rwp and refined values.

    ``rwp`` is None for a motif without a successful fit (an extracted motif
    whose scores were imported from elsewhere cannot be fitted here).
    """

    motif_id: int
    mask: str
    n_kept: int
    n_atoms: int
    sampler: str
    rwp: Optional[float]
    params: dict


@dataclass
class Run:
    """One structure fitted to one dataset with one fit configuration, and what was learnt from it.

    ``fits`` has one row per successful fit: ``motif_id``, ``n_kept``, ``rwp``,
    ``extracted`` (True for motifs added by ``explain``).
    """

    structure: StartingModel
    dataset: Dataset
    fit_config: FitConfig
    fits: pd.DataFrame
    n_failed: int
    best: Optional[MotifFit]  # the best *sampled* motif (extracted ones left out)
    extracted: Optional[MotifFit]  # the motif extracted from ``model``
    model: Optional[TrainedModel]  # the latest trained model of (structure, dataset, fit config)
    # atom_index, element, contribution, uncertainty, confidence, contribution_half, contribution_three_quarters,
    # environment_class (NaN where the structure has no stored environments)
    contributions: Optional[pd.DataFrame]

    @property
    def key(self) -> str:
        """A name for HTML anchors and file names."""
        return f"run-{self.structure.id}-{self.dataset.id}-{self.fit_config.id}"

    @property
    def title(self) -> str:
        return f"{self.structure.name} / {self.dataset.name}"

    @property
    def imported(self) -> bool:
        """True for scores computed elsewhere (``motex-db import-fits``): no PDF to draw, no fits to redo."""
        return self.fit_config.recipe == IMPORT_RECIPE

    @property
    def score_name(self) -> str:
        """What the ``rwp`` column holds: Rwp, or the imported score's name."""
        if not self.imported:
            return "Rwp"
        settings = self.fit_config.settings or {}
        sign = "−" if settings.get("stored_as") == "-score" else ""
        return f"{sign}{settings.get('score_column') or 'score'} (imported)"

    @property
    def permutable_elements(self) -> list[str]:
        """Element of each permutable atom, atom 1..N."""
        flags = permutable_flags(self.structure.elements, self.structure.permutable_elements)
        return [e for e, f in zip(self.structure.elements, flags) if f]


@dataclass
class SeriesFrame:
    """One frame of a series for one structure: its best sampled fit and latest model's contributions."""

    dataset: Dataset
    best_rwp: Optional[float]
    best_n_kept: Optional[int]
    contributions: Optional[pd.DataFrame]
    model_id: Optional[int]


@dataclass
class Series:
    """A time-resolved series: frames ordered by time, per structure fitted to it."""

    name: str
    datasets: list[Dataset]
    frames: dict[str, list[SeriesFrame]]  # structure name -> one entry per dataset (None-filled when not fitted)
    structures: dict[str, StartingModel]
    model_ids: list[int] = field(default_factory=list)  # every trained model the section draws on
    decomposition: Optional[Decomposition] = None  # the latest PCA/NMF decomposition of the series

    @property
    def times(self) -> np.ndarray:
        """Frame times (s); a frame without a time gets its index in the series."""
        return np.array([d.time if d.time is not None else float(i) for i, d in enumerate(self.datasets)])


@dataclass
class ReportData:
    """Everything the report shows, gathered once."""

    record_url: str  # password masked
    created_at: datetime
    version: str
    runs: list[Run]  # per-run sections
    comparisons: dict[str, list[Run]]  # dataset name -> runs of several structures
    series: list[Series]
    structures: list[StartingModel]
    datasets: list[Dataset]
    fit_configs: list[FitConfig]
    motif_counts: dict[int, int]  # starting model id -> motifs in its catalogue

    @property
    def trained_models(self) -> list[TrainedModel]:
        """The trained models of the per-run sections, each once (series frames: ``Series.model_ids``)."""
        seen: dict[int, TrainedModel] = {}
        for run in self.runs:
            if run.model is not None:
                seen.setdefault(run.model.id, run.model)
        return list(seen.values())


def composition(elements: Sequence[str]) -> str:
    """A chemical formula in order of first appearance: ``["W", "O", "O", "W"]`` -> ``"W2O2"``."""
    counts = Counter(elements)
    return "".join(f"{el}{counts[el] if counts[el] > 1 else ''}" for el in dict.fromkeys(elements))


def masks_of(engine: Engine, motif_ids: Sequence[int]) -> dict[int, str]:
    """Mask text of each motif id, in bulk (chunks keep the IN lists within database limits)."""
    out: dict[int, str] = {}
    ids = [int(i) for i in motif_ids]
    with Session(engine) as session:
        for start in range(0, len(ids), 20000):
            chunk = ids[start : start + 20000]
            out.update(session.exec(select(Motif.id, Motif.mask).where(Motif.id.in_(chunk))).all())
    return out


# ---------------------------------------------------------------- selection


def _check_names(session: Session, structures, datasets, series) -> None:
    for name in structures or ():
        get_starting_model(session, name)
    for name in datasets or ():
        get_dataset(session, name)
    for name in series or ():
        get_series_frames(session, name)


def _fit_counts(session: Session) -> pd.DataFrame:
    """(starting_model_id, dataset_id, fit_config_id, ok, failed) for every combination with results."""
    rows = session.exec(
        select(
            Motif.starting_model_id, FitResult.dataset_id, FitResult.fit_config_id,
            sa.func.sum(sa.case((FitResult.status == "ok", 1), else_=0)),
            sa.func.sum(sa.case((FitResult.status == "failed", 1), else_=0)),
        )
        .join(Motif, Motif.id == FitResult.motif_id)
        .group_by(Motif.starting_model_id, FitResult.dataset_id, FitResult.fit_config_id)
    ).all()
    return pd.DataFrame(rows, columns=["structure_id", "dataset_id", "fit_config_id", "ok", "failed"]).astype(
        {"ok": int, "failed": int}
    )


def _latest_models(session: Session) -> dict[tuple[int, int], TrainedModel]:
    """The latest trained model of each (structure, dataset), whatever its fit configuration."""
    latest: dict[tuple[int, int], TrainedModel] = {}
    for row in session.exec(select(TrainedModel).order_by(TrainedModel.id)).all():
        latest[(row.starting_model_id, row.dataset_id)] = row
    return latest


def _chosen_config(counts: pd.DataFrame, model: Optional[TrainedModel]) -> Optional[int]:
    """The latest model's fit configuration, else the one with the most successful fits."""
    if model is not None:
        return model.fit_config_id
    usable = counts[counts["ok"] > 0]
    if usable.empty:
        return None
    return int(usable.sort_values(["ok", "fit_config_id"]).iloc[-1]["fit_config_id"])


# ---------------------------------------------------------------- per run


def _motif_fit(row) -> MotifFit:
    motif, fit = row
    fitted = fit is not None and fit.status == "ok"
    return MotifFit(motif.id, motif.mask, motif.n_kept, motif.n_atoms, motif.sampler,
                    float(fit.rwp) if fitted else None, dict(fit.params or {}) if fitted else {})


def _best_sampled(session: Session, structure_id: int, dataset_id: int, config_id: int) -> Optional[MotifFit]:
    row = session.exec(
        select(Motif, FitResult)
        .join(FitResult, FitResult.motif_id == Motif.id)
        .where(Motif.starting_model_id == structure_id)
        .where(FitResult.dataset_id == dataset_id)
        .where(FitResult.fit_config_id == config_id)
        .where(FitResult.status == "ok")
        .where(sa.not_(Motif.sampler.like(f"{EXTRACTED_SAMPLER_PREFIX}%")))
        .order_by(FitResult.rwp, Motif.id)
        .limit(1)
    ).first()
    return _motif_fit(row) if row else None


def _extracted(session: Session, structure: StartingModel, dataset_id: int, config_id: int,
               model: Optional[TrainedModel], contributions: Optional[pd.DataFrame]) -> Optional[MotifFit]:
    """The motif explain extracted from ``model``.

    explain links it in ``trained_model.extracted_motif_id``; for a model
    explained before that column, the motif's ``sampler`` text names the
    model, and when the same mask had been sampled before, the catalogue kept
    the sampled row, so the mask (atoms with a negative contribution) finds it.
    """
    if model is None:
        return None
    # outer join: imported scores leave the extracted motif without a fit
    query = (
        select(Motif, FitResult)
        .outerjoin(FitResult, sa.and_(FitResult.motif_id == Motif.id, FitResult.dataset_id == dataset_id,
                                      FitResult.fit_config_id == config_id))
        .where(Motif.starting_model_id == structure.id)
    )
    if model.extracted_motif_id is not None:
        row = session.exec(query.where(Motif.id == model.extracted_motif_id)).first()
    else:
        row = session.exec(query.where(Motif.sampler == f"{EXTRACTED_SAMPLER_PREFIX} from trained model {model.id}")).first()
    if row is None and contributions is not None and len(contributions) == structure.n_permutable:
        ordered = contributions.sort_values("atom_index")["contribution"].to_numpy()
        mask = "".join("1" if c < 0 else "0" for c in ordered)
        row = session.exec(query.where(Motif.mask == mask)).first()
    return _motif_fit(row) if row else None


def _contributions(session: Session, model_id: int) -> Optional[pd.DataFrame]:
    rows = session.exec(
        select(AtomContribution).where(AtomContribution.trained_model_id == model_id).order_by(AtomContribution.atom_index)
    ).all()
    if not rows:
        return None
    # each permutable atom's environment class (NaN for a structure stored before environments were)
    classes = dict(session.exec(
        select(AtomEnvironment.permutable_index, AtomEnvironment.environment_class)
        .join(TrainedModel, TrainedModel.starting_model_id == AtomEnvironment.starting_model_id)
        .where(TrainedModel.id == model_id)
        .where(AtomEnvironment.permutable_index.is_not(None))
    ).all())
    # contribution_half / _three_quarters: from the first fits only (None for models explained before
    # explain stored them)
    return pd.DataFrame(
        [(r.atom_index, r.element, r.contribution, r.uncertainty, r.confidence,
          getattr(r, "contribution_half", None), getattr(r, "contribution_three_quarters", None),
          classes.get(r.atom_index)) for r in rows],
        columns=["atom_index", "element", "contribution", "uncertainty", "confidence", "contribution_half",
                 "contribution_three_quarters", "environment_class"],
    ).astype({"contribution_half": float, "contribution_three_quarters": float, "environment_class": float})


def _fits_frame(session: Session, structure_id: int, dataset_id: int, config_id: int) -> pd.DataFrame:
    rows = session.exec(
        select(Motif.id, Motif.n_kept, FitResult.rwp, Motif.sampler.like(f"{EXTRACTED_SAMPLER_PREFIX}%"))
        .join(FitResult, FitResult.motif_id == Motif.id)
        .where(Motif.starting_model_id == structure_id)
        .where(FitResult.dataset_id == dataset_id)
        .where(FitResult.fit_config_id == config_id)
        .where(FitResult.status == "ok")
        .order_by(Motif.id)
    ).all()
    frame = pd.DataFrame(rows, columns=["motif_id", "n_kept", "rwp", "extracted"])
    return frame.astype({"motif_id": np.int64, "n_kept": np.int64, "rwp": np.float64, "extracted": bool})


def _run(session: Session, structure: StartingModel, dataset: Dataset, counts: pd.DataFrame, latest: dict) -> Optional[Run]:
    model = latest.get((structure.id, dataset.id))
    config_id = _chosen_config(counts, model)
    if config_id is None:
        return None
    config = session.get(FitConfig, config_id)
    contributions = _contributions(session, model.id) if model is not None else None
    failed = counts.loc[counts["fit_config_id"] == config_id, "failed"]
    return Run(
        structure=structure,
        dataset=dataset,
        fit_config=config,
        fits=_fits_frame(session, structure.id, dataset.id, config_id),
        n_failed=int(failed.iloc[0]) if len(failed) else 0,
        best=_best_sampled(session, structure.id, dataset.id, config_id),
        extracted=_extracted(session, structure, dataset.id, config_id, model, contributions),
        model=model,
        contributions=contributions,
    )


# ---------------------------------------------------------------- series


def _series(session: Session, name: str, structures: list[StartingModel], counts: pd.DataFrame, latest: dict) -> Series:
    datasets = get_series_frames(session, name)
    frames: dict[str, list[SeriesFrame]] = {}
    used: dict[str, StartingModel] = {}
    model_ids: list[int] = []
    for structure in structures:
        entries, any_fit = [], False
        for dataset in datasets:
            pair = counts[(counts["structure_id"] == structure.id) & (counts["dataset_id"] == dataset.id)]
            model = latest.get((structure.id, dataset.id))
            config_id = _chosen_config(pair, model)
            best = _best_sampled(session, structure.id, dataset.id, config_id) if config_id is not None else None
            contributions = _contributions(session, model.id) if model is not None else None
            if model is not None:
                model_ids.append(model.id)
            any_fit |= best is not None
            entries.append(SeriesFrame(
                dataset=dataset, best_rwp=best.rwp if best else None, best_n_kept=best.n_kept if best else None,
                contributions=contributions, model_id=model.id if model is not None else None,
            ))
        if any_fit:
            frames[structure.name] = entries
            used[structure.name] = structure
    return Series(name=name, datasets=datasets, frames=frames, structures=used, model_ids=model_ids,
                  decomposition=latest_decomposition(session, name))


# ---------------------------------------------------------------- the whole report


def gather_report(
    engine: Engine,
    structures: Optional[Sequence[str]] = None,
    datasets: Optional[Sequence[str]] = None,
    series: Optional[Sequence[str]] = None,
    allow_empty: bool = False,
) -> ReportData:
    """Read what the report shows; names not in the record are refused with :class:`InputError`.

    ``allow_empty``: return no runs and series instead of refusing (the report
    has other sections, such as structure mining, to show).

    ``structures`` limits every section to those starting structures.
    ``datasets`` picks the datasets of the per-run sections (frames of a
    series included); ``series`` the series sections. With neither, every
    dataset outside a series gets per-run sections and every series its own.
    """
    structures = list(dict.fromkeys(structures or ()))
    datasets = list(dict.fromkeys(datasets or ()))
    series = list(dict.fromkeys(series or ()))
    with Session(engine) as session:
        _check_names(session, structures, datasets, series)
        all_structures = list(session.exec(select(StartingModel).order_by(StartingModel.id)).all())
        chosen_structures = [s for s in all_structures if not structures or s.name in structures]
        all_datasets = list(session.exec(select(Dataset).order_by(Dataset.id)).all())
        if datasets:
            run_datasets = [d for d in all_datasets if d.name in datasets]
        elif series:
            run_datasets = []
        else:
            run_datasets = [d for d in all_datasets if d.series is None]
        if series:
            series_names = series
        elif datasets:
            series_names = []
        else:
            series_names = sorted({d.series for d in all_datasets if d.series is not None})

        counts = _fit_counts(session)
        latest = _latest_models(session)
        runs = []
        for dataset in run_datasets:
            for structure in chosen_structures:
                pair = counts[(counts["structure_id"] == structure.id) & (counts["dataset_id"] == dataset.id)]
                run = _run(session, structure, dataset, pair, latest)
                if run is not None and len(run.fits):
                    runs.append(run)
        series_sections = [s for s in (_series(session, n, chosen_structures, counts, latest) for n in series_names)
                           if s.frames or s.decomposition is not None]
        if not runs and not series_sections and not allow_empty:
            raise InputError(
                "nothing to report: no successful fits for the chosen structures and datasets "
                "(run motex-db sample and fit first)."
            )
        comparisons: dict[str, list[Run]] = {}
        for run in runs:
            comparisons.setdefault(run.dataset.name, []).append(run)
        comparisons = {name: group for name, group in comparisons.items() if len(group) > 1}

        structure_ids = {r.structure.id for r in runs} | {
            s.id for section in series_sections for s in section.structures.values()
        }
        dataset_ids = {r.dataset.id for r in runs} | {d.id for section in series_sections for d in section.datasets}
        config_ids = {r.fit_config.id for r in runs}
        config_ids |= set(
            counts[counts["structure_id"].isin(structure_ids) & counts["dataset_id"].isin(dataset_ids)]["fit_config_id"]
        )
        configs = list(session.exec(select(FitConfig).where(FitConfig.id.in_(sorted(config_ids))).order_by(FitConfig.id)).all())
        motif_counts = dict(
            session.exec(
                select(Motif.starting_model_id, sa.func.count()).where(Motif.starting_model_id.in_(sorted(structure_ids)))
                .group_by(Motif.starting_model_id)
            ).all()
        )
    return ReportData(
        record_url=safe_url(engine.url.render_as_string(hide_password=False)),
        created_at=datetime.now(timezone.utc),
        version=motex_db.__version__,
        runs=runs,
        comparisons=comparisons,
        series=series_sections,
        structures=[s for s in all_structures if s.id in structure_ids],
        datasets=[d for d in all_datasets if d.id in dataset_ids],
        fit_configs=configs,
        motif_counts=motif_counts,
    )


def extracted_composition(run: Run) -> Optional[str]:
    """Formula of the extracted motif with its bonded atoms, e.g. ``"W12O40"``."""
    if run.extracted is None:
        return None
    elements, _ = motif_atoms(run.structure, run.extracted.mask)
    return composition(elements)

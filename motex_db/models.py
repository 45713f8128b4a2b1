"""The record: SQLModel tables.

The schema is a user interface (people query it with SQL), so table and column
names are public and change only through a migration in ``migrations/``.
Arrays are stored as ``.npy`` bytes (compact, self-describing, no pickle);
small parameter dictionaries as JSON.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class NumpyArray(sa.types.TypeDecorator):
    """A numpy array stored as the bytes of an ``.npy`` file."""

    impl = sa.LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Optional[bytes]:
        if value is None:
            return None
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
        return buffer.getvalue()

    def process_result_value(self, value: Any, dialect: Any) -> Optional[np.ndarray]:
        if value is None:
            return None
        return np.load(io.BytesIO(value), allow_pickle=False)


def _array_column(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(NumpyArray(), nullable=nullable))


def _json_column(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(sa.JSON(), nullable=nullable))


def _created_at() -> Any:
    return Field(
        default_factory=utcnow,
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False),
    )


def _foreign_key(target: str) -> Any:
    # ON DELETE CASCADE so that removing a structure or dataset removes what was
    # computed from it, also when someone deletes rows with plain SQL.
    return Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False, index=True
        )
    )


class StartingModel(SQLModel, table=True):
    """A discrete starting structure and the choices that define its catalogue."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "starting_model"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    source_file: str
    content_hash: str = Field(index=True)
    # hash of (content, permutable elements, bond cutoff, radius): adding the same
    # file with the same choices again finds the existing row
    identity_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    n_atoms: int
    elements: list = _json_column()
    positions: np.ndarray = _array_column()
    permutable_elements: list = _json_column()
    n_permutable: int
    bond_cutoff: float
    radius: Optional[float] = None
    created_at: datetime = _created_at()


class Dataset(SQLModel, table=True):
    """A measured (or derived) PDF: r in Å, G in Å^-2."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "dataset"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    source_file: str
    content_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    n_points: int
    r_min: float
    r_max: float
    r: np.ndarray = _array_column()
    g: np.ndarray = _array_column()
    dg: Optional[np.ndarray] = _array_column(nullable=True)
    meta: dict = _json_column()
    series: Optional[str] = Field(default=None, index=True)
    time: Optional[float] = None
    created_at: datetime = _created_at()


class SeriesDecomposition(SQLModel, table=True):
    """PCA, NMF and frame correlations of a time-resolved series over one r range."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "series_decomposition"

    id: Optional[int] = Field(default=None, primary_key=True)
    series: str = Field(index=True)
    # hash of (frames' content hashes in time order, r range, components requested):
    # running the same decomposition again finds this row
    inputs_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    r_min: float
    r_max: float
    n_frames: int
    # the frames' dataset ids, in time order (the rows and columns of `correlation`)
    frame_ids: np.ndarray = _array_column()
    components_requested: str
    n_components: int
    # PCA explained-variance ratio of every component (not only the kept ones)
    explained_variance: np.ndarray = _array_column()
    # Pearson correlation matrix of the frames over [r_min, r_max]
    correlation: np.ndarray = _array_column()
    # NMF ran on G(r) + shift, with shift = -min G over all frames (>= 0)
    shift: float
    # ||X - W H||_F / ||X||_F of the NMF on the shifted data
    nmf_relative_error: float
    created_at: datetime = _created_at()


class SeriesComponent(SQLModel, table=True):
    """One NMF component of a decomposition, stored as a derived dataset."""

    __tablename__ = "series_component"
    __table_args__ = (
        sa.UniqueConstraint("decomposition_id", "component", name="uq_series_component"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    decomposition_id: int = _foreign_key("series_decomposition.id")
    # 1-based
    component: int
    dataset_id: int = _foreign_key("dataset.id")


class ComponentWeight(SQLModel, table=True):
    """The weight of one NMF component in one frame."""

    __tablename__ = "component_weight"
    __table_args__ = (
        sa.UniqueConstraint("series_component_id", "frame_dataset_id", name="uq_component_weight"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    series_component_id: int = _foreign_key("series_component.id")
    frame_dataset_id: int = _foreign_key("dataset.id")
    weight: float


class Motif(SQLModel, table=True):
    """A subset of a starting model's permutable atoms."""

    __tablename__ = "motif"
    __table_args__ = (
        sa.UniqueConstraint("starting_model_id", "mask", name="uq_motif_mask"),
        sa.Index("ix_motif_model_size", "starting_model_id", "n_kept"),
        sa.Index("ix_motif_model_signature", "starting_model_id", "signature"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    starting_model_id: int = _foreign_key("starting_model.id")
    # one '0'/'1' per permutable atom, in file order
    mask: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    n_kept: int
    n_atoms: int
    sampler: str
    # the isometry signature (environments.motif_signatures): equal for motifs with equal PDFs;
    # set by sample --dedup isometry, NULL otherwise
    signature: Optional[str] = Field(default=None, sa_column=sa.Column(sa.String(32), nullable=True))
    created_at: datetime = _created_at()


class FitConfig(SQLModel, table=True):
    """Everything that changes a fit result; unique by content."""

    __tablename__ = "fit_config"

    id: Optional[int] = Field(default=None, primary_key=True)
    content_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    recipe: str
    calculator: str
    rmin: float
    rmax: float
    qmin: float
    qmax: float
    qdamp: float
    qbroad: float
    settings: dict = _json_column()
    engine_version: str
    created_at: datetime = _created_at()


class FitResult(SQLModel, table=True):
    """One motif fitted to one dataset with one configuration."""

    __tablename__ = "fit_result"
    __table_args__ = (
        sa.UniqueConstraint("motif_id", "dataset_id", "fit_config_id", name="uq_fit_result"),
        sa.Index("ix_fit_result_rwp", "dataset_id", "fit_config_id", "rwp"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    motif_id: int = _foreign_key("motif.id")
    dataset_id: int = _foreign_key("dataset.id")
    fit_config_id: int = _foreign_key("fit_config.id")
    status: str = Field(
        sa_column=sa.Column(
            sa.String(10),
            sa.CheckConstraint("status IN ('ok', 'failed')", name="ck_fit_result_status"),
            nullable=False,
        )
    )
    rwp: Optional[float] = None
    params: Optional[dict] = _json_column(nullable=True)
    error: Optional[str] = None
    seconds: float = 0.0
    # scores of this motif averaged into the result by import-fits (ML-MotEx's files repeat masks); 1 otherwise
    n_averaged: int = Field(default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1"))
    # the motif whose fit this result copies (an image of this one: same isometry signature, same PDF);
    # NULL when this motif was fitted itself. No foreign key: SQLite adds one only by copying the
    # table, which would break the views on it; both motifs go with their starting model.
    fitted_motif_id: Optional[int] = None
    created_at: datetime = _created_at()


class TrainedModel(SQLModel, table=True):
    """A surrogate model of Rwp from atom presence (step 3)."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "trained_model"

    id: Optional[int] = Field(default=None, primary_key=True)
    starting_model_id: int = _foreign_key("starting_model.id")
    dataset_id: int = _foreign_key("dataset.id")
    fit_config_id: int = _foreign_key("fit_config.id")
    # unique: two identical `train` commands store one model (the second reuses it)
    inputs_hash: str = Field(index=True, unique=True)
    n_motifs: int
    seed: int
    hyperparameters: dict = _json_column()
    metrics: dict = _json_column()
    overall_confidence: Optional[float] = None
    model: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    mlflow_run_id: Optional[str] = None
    # the fitted motifs it learnt from, in the order they were split (by motif id)
    motif_ids: Optional[np.ndarray] = _array_column(nullable=True)
    n_iter: Optional[int] = None
    cv: Optional[int] = None
    # {"trials": [{"index", "params", "cv_mae"}], "learning_curve": {"train"|"validation": {"mae": [...], ...}},
    #  "best_iteration": int}
    training_log: Optional[dict] = _json_column(nullable=True)
    # {"half": {"n_motifs", "sign_changes"}, "three_quarters": {...}}: do the contributions still move?
    convergence: Optional[dict] = _json_column(nullable=True)
    # set when the model is one frame's model of `train --series`: the series name
    series: Optional[str] = Field(default=None, index=True)
    # the motif `explain` extracted from this model (its negative atoms), once explained. No
    # foreign key: migration 0008 adds the column in place on SQLite, where alembic cannot add
    # one; the motif and the model are removed together (both cascade from the starting model).
    extracted_motif_id: Optional[int] = None
    created_at: datetime = _created_at()


class AtomContribution(SQLModel, table=True):
    """One permutable atom's importance for the fit quality (step 4)."""

    __tablename__ = "atom_contribution"
    __table_args__ = (
        sa.UniqueConstraint("trained_model_id", "atom_index", name="uq_atom_contribution"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    trained_model_id: int = _foreign_key("trained_model.id")
    # 1-based among the permutable atoms, file order
    atom_index: int
    element: str
    contribution: float
    uncertainty: float
    confidence: float
    # the same atom's contribution from models trained on the first half and three
    # quarters of the fits (in motif order), with the final model's hyper-parameters
    contribution_half: Optional[float] = None
    contribution_three_quarters: Optional[float] = None


class PolishRun(SQLModel, table=True):
    """A direct search from a start motif to the best-fitting motif (step 5, ``motex-db polish``).

    Every motif it evaluates is an ordinary ``motif`` row (sampler 'polish')
    with its ``fit_result``; this row holds the search's inputs, its state and
    what it found. The same inputs again find this row: a finished run is
    reused, an interrupted one is taken over and replayed from the stored fits.
    """

    __tablename__ = "polish_run"

    id: Optional[int] = Field(default=None, primary_key=True)
    starting_model_id: int = _foreign_key("starting_model.id")
    dataset_id: int = _foreign_key("dataset.id")
    fit_config_id: int = _foreign_key("fit_config.id")
    start_motif_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("motif.id", ondelete="CASCADE"), nullable=False)
    )
    # structure, dataset, fit config, start motif, strategy, budget, seed, options
    inputs_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    strategy: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    budget: int
    seed: int
    # {"min_gain", "patience", "tenure", "swap_candidates"}
    options: dict = _json_column()
    status: str = Field(
        sa_column=sa.Column(
            sa.String(10),
            sa.CheckConstraint("status IN ('running', 'done')", name="ck_polish_run_status"),
            nullable=False,
        )
    )
    start_rwp: Optional[float] = None
    best_motif_id: Optional[int] = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("motif.id", ondelete="CASCADE"), nullable=True)
    )
    best_rwp: Optional[float] = None
    # motifs the search looked at (stored fits included) and fits it computed itself
    n_evaluated: int = 0
    n_fitted: int = 0
    seconds: float = 0.0
    # why it stopped: 'budget' or 'converged'
    stopped: Optional[str] = None
    # best Rwp at each motif size among the motifs it evaluated: [{"n_kept", "rwp", "motif_id"}]
    path: Optional[list] = _json_column(nullable=True)
    # the process running it (host:pid:token) and its lease, as for fit claims
    worker: Optional[str] = None
    expires_at: Optional[datetime] = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))
    created_at: datetime = _created_at()
    finished_at: Optional[datetime] = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))


class LearningClaim(SQLModel, table=True):
    """A process's lease on one unit of learning work while it does it.

    ``key`` names the unit: a training's inputs hash, a series frame's, or
    ``explain:`` and a trained model id. Like :class:`FitClaim`, claims are
    bookkeeping: inserted before the work, deleted with the transaction that
    stores its result, taken over when past ``expires_at`` or when the worker
    was a process on this machine that is gone. The holder renews its lease
    while it works.
    """

    __tablename__ = "learning_claim"

    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    # host:pid:token, as in fit claims
    worker: str
    expires_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class FitClaim(SQLModel, table=True):
    """A worker's lease on one (motif, dataset, fit_config) while it fits it.

    Claims are short-lived bookkeeping, not results: a worker inserts them in
    the transaction that picks its batch and deletes them in the transaction
    that writes the results. A claim past ``expires_at`` (its worker died or
    hangs) may be taken over by any worker.
    """

    __tablename__ = "fit_claim"
    __table_args__ = (
        sa.UniqueConstraint("motif_id", "dataset_id", "fit_config_id", name="uq_fit_claim"),
        sa.Index("ix_fit_claim_work", "dataset_id", "fit_config_id"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    motif_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("motif.id", ondelete="CASCADE"), nullable=False)
    )
    dataset_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False)
    )
    fit_config_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("fit_config.id", ondelete="CASCADE"), nullable=False)
    )
    # host:pid:token, so a worker on the same host can see that the process is gone
    worker: str
    expires_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


# --------------------------------------------------------------------------
# Structure mining: libraries of candidate crystal structures, ranked against a PDF
# (MLstructureMining, Kjær et al., Digital Discovery 3, 908 (2024)).


class Library(SQLModel, table=True):
    """A named library of candidate crystal structures and the settings their PDFs were simulated with."""

    __tablename__ = "library"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    # LibrarySettings.to_dict(): rmax, rstep, qmin, qmax, qdamp, uiso, bundle_pcc, radiation
    settings: dict = _json_column()
    created_at: datetime = _created_at()


class LibraryClass(SQLModel, table=True):
    """Structures whose simulated PDFs correlate at Pearson r >= the library's threshold, bundled as one."""

    __tablename__ = "library_class"
    __table_args__ = (sa.UniqueConstraint("library_id", "class_index", name="uq_library_class_index"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    library_id: int = _foreign_key("library.id")
    # 0-based, in the order the classes were made
    class_index: int
    n_members: int
    created_at: datetime = _created_at()


class LibraryStructure(SQLModel, table=True):
    """One crystal structure of a library: the file, the crystal, its simulated PDF and its class."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "library_structure"
    __table_args__ = (sa.UniqueConstraint("library_id", "content_hash", name="uq_library_structure_content"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    library_id: int = _foreign_key("library.id")
    # the file name (two folders may hold files of one name: the id tells them apart)
    name: str
    source_path: str
    content_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    formula: str
    spacegroup: Optional[str] = None
    # a, b, c (Å), alpha, beta, gamma (degrees)
    cell: list = _json_column()
    n_atoms: int
    # {"symbols", "cell" (3x3, Å), "scaled_positions", "occupancies"}: enough to rebuild the crystal
    crystal: dict = _json_column()
    # G(r) on the library's grid 0..rmax (Å^-2)
    g: np.ndarray = _array_column()
    class_id: int = _foreign_key("library_class.id")
    # the first member of its class, whose PDF stands for the class
    representative: bool = False
    created_at: datetime = _created_at()


class LibraryClassifier(SQLModel, table=True):
    """An XGBoost classifier of a library's classes, trained on Latin-hypercube-varied simulated PDFs."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "library_classifier"

    id: Optional[int] = Field(default=None, primary_key=True)
    library_id: int = _foreign_key("library.id")
    # the classes and members it was trained on, the recipe and the seed
    inputs_hash: str = Field(index=True)
    n_classes: int
    n_per_class: int
    seed: int
    # model output column k is library_class.id class_ids[k]
    class_ids: np.ndarray = _array_column()
    hyperparameters: dict = _json_column()
    # accuracy, top3_accuracy, log_loss on the held-out test PDFs; best_iteration, training seconds
    metrics: dict = _json_column()
    model: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    mlflow_run_id: Optional[str] = None
    created_at: datetime = _created_at()


class MiningResult(SQLModel, table=True):
    """One ranking of a library's classes for one dataset."""

    __tablename__ = "mining_result"

    id: Optional[int] = Field(default=None, primary_key=True)
    dataset_id: int = _foreign_key("dataset.id")
    library_id: int = _foreign_key("library.id")
    method: str = Field(
        sa_column=sa.Column(
            sa.String(20), sa.CheckConstraint("method IN ('pcc', 'classifier')", name="ck_mining_method"), nullable=False
        )
    )
    classifier_id: Optional[int] = Field(
        default=None,
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("library_classifier.id", ondelete="CASCADE"), nullable=True),
    )
    # dataset, library state, method, options: the same again reuses this row
    inputs_hash: str = Field(index=True)
    # {"top", "refine", "r_min", "r_max", ...}
    settings: dict = _json_column()
    # the warning that the PDF is probably outside the catalogue, and the numbers behind it
    out_of_catalogue: bool
    confidence: dict = _json_column()
    seconds: float
    created_at: datetime = _created_at()


class MiningCandidate(SQLModel, table=True):
    """A ranked candidate of a mining result: a class and its best-matching structure."""

    __tablename__ = "mining_candidate"
    __table_args__ = (sa.UniqueConstraint("mining_result_id", "rank", name="uq_mining_candidate_rank"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    mining_result_id: int = _foreign_key("mining_result.id")
    rank: int
    class_id: int = _foreign_key("library_class.id")
    structure_id: int = _foreign_key("library_structure.id")
    # Pearson r (pcc) or class probability (classifier)
    score: float
    # the quick refinement: {"scale", "lattice", "uiso", "diameter"} and its Rwp (None when not refined)
    params: Optional[dict] = _json_column(nullable=True)
    rwp: Optional[float] = None
    # the relative isotropic lattice stretch at which the structure's PDF correlates best with the data
    # (pcc's lattice-aware scan; None for rankings made before it)
    stretch: Optional[float] = None


# --------------------------------------------------------------------------
# Atom environments: k-nearest-neighbour distance vectors and the k-NN atom-type check.


class AtomEnvironment(SQLModel, table=True):
    """One atom of a starting model: its k-NN distance vector, its neighbours' species and its class."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "atom_environment"
    __table_args__ = (sa.UniqueConstraint("starting_model_id", "atom_number", name="uq_atom_environment"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    starting_model_id: int = _foreign_key("starting_model.id")
    # 1-based among all atoms, file order
    atom_number: int
    # 1-based among the permutable atoms (atom_contribution.atom_index), None for the others
    permutable_index: Optional[int] = None
    element: str
    k: int
    # Å: vectors within it are one class
    tolerance: float
    # the k distances (Å), increasing
    distances: np.ndarray = _array_column()
    # the k neighbours' element symbols, in the order of the distances
    neighbours: list = _json_column()
    # 1-based per starting model, numbered in order of first appearance
    environment_class: int


class AtomTypeCheck(SQLModel, table=True):
    """An XGBoost classifier of element from k-NN distances, and its verdict on one starting model's atoms."""

    model_config = {"arbitrary_types_allowed": True}

    __tablename__ = "atom_type_check"

    id: Optional[int] = Field(default=None, primary_key=True)
    starting_model_id: int = _foreign_key("starting_model.id")
    library_id: Optional[int] = Field(
        default=None,
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("library.id", ondelete="CASCADE"), nullable=True),
    )
    # 'library' (trained on a structure library's crystals) or 'record' (on the record's starting models)
    source: str
    k: int
    seed: int
    # the training structures, the checked structure, k, seed and method: the same again reuses this row
    inputs_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    # the classifier's element classes, in output order
    classes: list = _json_column()
    # per atom in file order: the predicted element, its probability and the labelled element's probability
    predicted: list = _json_column()
    probability: np.ndarray = _array_column()
    label_probability: np.ndarray = _array_column()
    # held-out accuracy, per-element confusion matrix, accuracy for k = 1..10, sizes
    metrics: dict = _json_column()
    model: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    mlflow_run_id: Optional[str] = None
    seconds: float
    created_at: datetime = _created_at()

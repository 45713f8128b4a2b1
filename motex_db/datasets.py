"""Measured PDFs: reading data files and keeping them in the record.

Three formats are read:

- PDFgetX3 / xPDFsuite ``.gr``: an INI-style header whose ``[PDF]`` keys (qmin,
  qmax, composition, mode...) are kept as metadata, data after ``#### start data``,
  2 columns (r, G), 3 (r, G, dG) or 4 (r, G, dr, dG);
- plain text with ``#`` comments, the same columns;
- CSV with a header naming an ``r`` and a ``G`` column (and optionally ``dG``).
"""

from __future__ import annotations

import configparser
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.db import get_named, transaction
from motex_db.errors import InputError
from motex_db.models import Dataset
from motex_db.structures import file_hash

MIN_POINTS = 10
START_DATA_MARKER = "#### start data"
_G_NAMES = ("g", "gr", "g(r)", "gobs", "g_obs")
_DG_NAMES = ("dg", "dgr", "dg(r)", "sigma", "gerr")


@dataclass
class PDFData:
    """A PDF read from a file: r in Å, G in Å^-2, optional uncertainties dG."""

    r: np.ndarray
    g: np.ndarray
    dg: Optional[np.ndarray]
    meta: dict = field(default_factory=dict)
    source_file: str = ""
    content_hash: str = ""


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and text.strip().lstrip("-").isdigit() else value


def _parse_header(lines: Sequence[str]) -> dict:
    """The ``[PDF]`` section of an xPDFsuite/PDFgetX3 header, values as numbers where they are."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    try:
        parser.read_string(text)
    except configparser.Error:
        return {}
    if not parser.has_section("PDF"):
        return {}
    return {key: _number(value) for key, value in parser.items("PDF")}


def _parse_columns(lines: Iterable[tuple[int, str]], path: Path) -> np.ndarray:
    rows = []
    for number, line in lines:
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        try:
            rows.append([float(value) for value in stripped.replace(",", " ").split()])
        except ValueError:
            raise InputError(f"{path}, line {number}: '{stripped[:40]}' is not a row of numbers.") from None
    if not rows:
        raise InputError(f"{path} holds no data rows.")
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise InputError(f"{path}: the data rows do not all have the same number of columns.")
    return np.array(rows, dtype=float)


def _read_text(path: Path, text: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], dict]:
    lines = text.splitlines()
    marker = next((i for i, line in enumerate(lines) if line.strip().startswith(START_DATA_MARKER)), None)
    meta = _parse_header(lines[:marker]) if marker is not None else {}
    start = marker + 1 if marker is not None else 0
    table = _parse_columns(((i + 1, lines[i]) for i in range(start, len(lines))), path)
    ncol = table.shape[1]
    if ncol < 2:
        raise InputError(f"{path} has one column: a G column is needed after r.")
    dg = {3: 2, 4: 3}.get(ncol)
    return table[:, 0], table[:, 1], (table[:, dg] if dg is not None else None), meta


def _read_csv(path: Path, text: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], dict]:
    reader = csv.reader(io.StringIO("\n".join(l for l in text.splitlines() if not l.startswith("#"))))
    header = [name.strip().lower() for name in next(reader, [])]
    if "r" not in header:
        raise InputError(f"{path} has no 'r' column in its header (found: {', '.join(header) or 'nothing'}).")
    g_col = next((header.index(n) for n in _G_NAMES if n in header), None)
    if g_col is None:
        raise InputError(f"{path} has no G column (expected a column named G, gr or g(r)).")
    dg_col = next((header.index(n) for n in _DG_NAMES if n in header), None)
    columns = [header.index("r"), g_col] + ([dg_col] if dg_col is not None else [])
    values = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            values.append([float(row[c]) for c in columns])
        except (ValueError, IndexError):
            raise InputError(f"{path}, line {number}: not a row of numbers in the r and G columns.") from None
    if not values:
        raise InputError(f"{path} holds no data rows.")
    table = np.array(values)
    return table[:, 0], table[:, 1], (table[:, 2] if dg_col is not None else None), {}


def read_pdf_data(path: str | Path) -> PDFData:
    """Read and validate a PDF data file (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file.") from None
    reader = _read_csv if path.suffix.lower() == ".csv" else _read_text
    r, g, dg, meta = reader(path, text)
    validate_pdf(path, r, g, dg)
    return PDFData(r=r, g=g, dg=dg, meta=meta, source_file=path.name, content_hash=file_hash(path))


def validate_pdf(source, r: np.ndarray, g: np.ndarray, dg: Optional[np.ndarray]) -> None:
    """Refuse data no fit can use: too few points, NaN or inf, r not increasing."""
    if len(r) < MIN_POINTS:
        raise InputError(f"{source} has {len(r)} data points; at least {MIN_POINTS} are needed.")
    for label, values in (("r", r), ("G", g), ("dG", dg)):
        if values is not None and not np.all(np.isfinite(values)):
            row = int(np.flatnonzero(~np.isfinite(values))[0]) + 1
            raise InputError(f"{source} has a NaN or infinite {label} value (data row {row}).")
    if np.any(np.diff(r) <= 0):
        row = int(np.flatnonzero(np.diff(r) <= 0)[0]) + 2
        raise InputError(f"{source}: r does not increase at data row {row}.")


def read_times_file(path: str | Path) -> dict[str, float]:
    """A frame-times CSV with columns ``file,time`` (time in seconds), keyed by file name."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"times file {path} does not exist.")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    if not rows or not {"file", "time"} <= set(rows[0]):
        raise InputError(f"times file {path} needs a header with the columns file,time.")
    times = {}
    for number, row in enumerate(rows, start=2):
        try:
            times[Path(row["file"]).name] = float(row["time"])
        except (TypeError, ValueError):
            raise InputError(f"{path}, line {number}: '{row['time']}' is not a time in seconds.") from None
    return times


def add_datasets(
    engine: Engine,
    paths: Sequence[str | Path],
    name: Optional[str] = None,
    series: Optional[str] = None,
    time: Optional[float] = None,
    times_file: Optional[str | Path] = None,
) -> list[tuple[Dataset, bool]]:
    """Add data files as datasets in one transaction; returns (row, created) per file.

    Every file is read and validated before anything is written, so a bad file
    leaves the record as it was. A file whose content is already stored gives
    the existing row. Within a series, frame times come from ``time`` (one
    file), the times file, or the order of the files: 0, 1, 2, ... for a new
    series, and for a series that has frames, on after its last time with its
    step (the last two frames' difference; 1 for a series of one frame). A
    time the series already has, or two new frames at one time, is refused.
    """
    if not paths:
        raise InputError("name at least one data file.")
    if name is not None and len(paths) > 1:
        raise InputError("--name names one dataset; with several files each is named after its file.")
    if time is not None and len(paths) > 1:
        raise InputError("--time gives the time of one file; use --times FILE.csv for several.")
    times = read_times_file(times_file) if times_file is not None else None
    data = [read_pdf_data(path) for path in paths]
    names = [name] if name is not None else [Path(p).stem for p in paths]
    given_times: Optional[list[float]] = None
    if times is not None:
        given_times = []
        for item in data:
            if item.source_file not in times:
                raise InputError(f"times file {times_file} gives no time for {item.source_file}.")
            given_times.append(times[item.source_file])
    elif time is not None:
        given_times = [time]
    if len(set(names)) != len(names):
        raise InputError("two of the files would get the same dataset name; add them separately with --name.")

    results = []
    with transaction(engine) as session:
        if series is None:
            frame_times: list[Optional[float]] = given_times or [None] * len(data)
        else:
            frame_times = _series_frame_times(session, series, data, given_times)
        for item, dataset_name, frame_time in zip(data, names, frame_times):
            existing = session.exec(select(Dataset).where(Dataset.content_hash == item.content_hash)).first()
            if existing is not None:
                results.append((existing, False))
                continue
            if session.exec(select(Dataset).where(Dataset.name == dataset_name)).first():
                raise InputError(
                    f"the name '{dataset_name}' is already used by a dataset with other content; "
                    "choose another --name."
                )
            row = Dataset(
                name=dataset_name,
                source_file=item.source_file,
                content_hash=item.content_hash,
                n_points=len(item.r),
                r_min=float(item.r[0]),
                r_max=float(item.r[-1]),
                r=item.r,
                g=item.g,
                dg=item.dg,
                meta=item.meta,
                series=series,
                time=frame_time,
            )
            session.add(row)
            session.flush()
            results.append((row, True))
    return results


def _series_frame_times(
    session: Session, series: str, data: Sequence[PDFData], given: Optional[list[float]]
) -> list[float]:
    """Times of new frames of ``series``: the given ones, else on from the series' last time with its step.

    Files whose content is already stored keep their row and are left out of
    the check. Raises :class:`InputError` for a time the series already has
    or one given to two new frames.
    """
    stored = session.exec(select(Dataset.content_hash, Dataset.time).where(Dataset.series == series)).all()
    taken = sorted(t for _, t in stored if t is not None)
    if given is None:
        if not taken:
            return [float(index) for index in range(len(data))]
        step = taken[-1] - taken[-2] if len(taken) > 1 else 1.0
        return [taken[-1] + step * (index + 1) for index in range(len(data))]
    known_content = {h for h, _ in stored}
    seen: dict[float, str] = {}
    for item, t in zip(data, given):
        if item.content_hash in known_content:
            continue
        if t in taken:
            raise InputError(f"series '{series}' already has a frame at t = {t:g} s ({item.source_file}); "
                             "give it another time.")
        if t in seen:
            raise InputError(f"{seen[t]} and {item.source_file} are both given t = {t:g} s in series '{series}'.")
        seen[t] = item.source_file
    return list(given)


def get_dataset(session: Session, name: str) -> Dataset:
    """The dataset called ``name``, or a clear error listing the known ones."""
    return get_named(session, Dataset, name, "dataset", "data add")


def get_series_frames(session: Session, name: str) -> list[Dataset]:
    """The frames of series ``name`` in time order (frames without a time last, in the order added)."""
    frames = list(session.exec(select(Dataset).where(Dataset.series == name)).all())
    if not frames:
        known = sorted(set(session.exec(select(Dataset.series).where(Dataset.series.is_not(None))).all()))
        hint = f" (known: {', '.join(known)})" if known else " (none yet: add frames with data add --series NAME)"
        raise InputError(f"no series named '{name}'{hint}.")
    frames.sort(key=lambda d: (d.time is None, d.time if d.time is not None else 0.0, d.id))
    return frames


def write_gr(path: str | Path, r: np.ndarray, g: np.ndarray, header: dict, title: str) -> Path:
    """Write a PDF as a ``.gr`` file whose ``[PDF]`` header records ``header``.

    The file reads back with :func:`read_pdf_data`, header values as metadata.
    """
    path = Path(path)
    lines = [f"# {title}", "[PDF]"]
    lines += [f"{key} = {value}" for key, value in header.items()]
    lines += ["", START_DATA_MARKER, "#L r(Å) G(Å^-2)"]
    lines += [f"{x:.6f} {y:.10g}" for x, y in zip(r, g)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

"""The record as a notebook sees it: pandas DataFrames, and read-only SQL.

    >>> import motex_db
    >>> record = motex_db.open_record("sqlite:///motex.db")
    >>> record.structures()            # one row per starting model
    >>> record.motifs("keggin")        # motifs with their best fit per dataset and config
    >>> record.sql("SELECT * FROM motif_fit ORDER BY rwp LIMIT 5")
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motex_db.db import is_sqlite, open_engine, safe_url
from motex_db.errors import InputError


def read_only_query(engine: Engine, query: str) -> tuple[list[str], list[tuple]]:
    """Run one SQL statement that may only read; returns (column names, rows).

    The statement runs in a read-only transaction that is always rolled back, so
    a write is refused by the database itself (SQLite's ``query_only``,
    PostgreSQL's ``READ ONLY`` transaction) and changes nothing.
    """
    if not query.strip():
        raise InputError("the SQL query is empty.")
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        if is_sqlite(engine):
            raw.execute("PRAGMA query_only = ON")
        else:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            result = connection.exec_driver_sql(query)
            if not result.returns_rows:
                raise InputError("the SQL statement returned no rows; motex-db sql only reads.")
            columns = list(result.keys())
            rows = [tuple(row) for row in result.fetchall()]
        except sa.exc.DBAPIError as exc:
            connection.rollback()
            message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise InputError(f"the database refused the query: {message}") from None
        finally:
            if is_sqlite(engine):
                connection.rollback()
                raw.execute("PRAGMA query_only = OFF")
        connection.rollback()
    return columns, rows


_STATUS_QUERY = """
SELECT s.name AS structure, d.name AS dataset,
       (SELECT COUNT(*) FROM motif m WHERE m.starting_model_id = s.id) AS motifs,
       COALESCE(SUM(CASE WHEN f.status = 'ok' THEN 1 ELSE 0 END), 0) AS fits_ok,
       COALESCE(SUM(CASE WHEN f.status = 'failed' THEN 1 ELSE 0 END), 0) AS fits_failed,
       MIN(f.rwp) AS best_rwp,
       (SELECT COUNT(*) FROM trained_model t
         WHERE t.starting_model_id = s.id AND t.dataset_id = d.id) AS trained_models
FROM starting_model s
CROSS JOIN dataset d
LEFT JOIN motif m ON m.starting_model_id = s.id
LEFT JOIN fit_result f ON f.motif_id = m.id AND f.dataset_id = d.id
GROUP BY s.id, s.name, d.id, d.name
ORDER BY s.id, d.id
"""


class Record:
    """A motex-db record opened by URL, for notebooks and scripts."""

    def __init__(self, url: Optional[str] = None, engine: Optional[Engine] = None):
        self.engine = engine if engine is not None else open_engine(url)

    def __repr__(self) -> str:
        return f"Record({safe_url(str(self.engine.url))!r})"

    def _frame(self, query: str, **params) -> pd.DataFrame:
        with self.engine.connect() as connection:
            return pd.read_sql_query(sa.text(query), connection, params=params)

    def sql(self, query: str) -> pd.DataFrame:
        """Any read-only SQL as a DataFrame."""
        columns, rows = read_only_query(self.engine, query)
        return pd.DataFrame(rows, columns=columns)

    def structures(self) -> pd.DataFrame:
        """One row per starting model (atoms are in the table; see ``structure_atoms``)."""
        return self._frame(
            "SELECT id, name, source_file, n_atoms, n_permutable, permutable_elements, "
            "bond_cutoff, radius, created_at FROM starting_model ORDER BY id"
        )

    def datasets(self) -> pd.DataFrame:
        """One row per dataset, without the arrays (see ``dataset_curve``)."""
        return self._frame(
            "SELECT id, name, source_file, n_points, r_min, r_max, series, time, meta, created_at "
            "FROM dataset ORDER BY id"
        )

    def dataset_curve(self, name: str) -> pd.DataFrame:
        """The r (Å) and G (Å^-2) columns of a dataset."""
        from motex_db.datasets import get_dataset
        from sqlmodel import Session

        with Session(self.engine) as session:
            row = get_dataset(session, name)
            return pd.DataFrame({"r": row.r, "g": row.g})

    def motifs(self, structure: Optional[str] = None) -> pd.DataFrame:
        """Motifs, one row per (motif, fit) with the fit columns empty for unfitted motifs."""
        query = (
            "SELECT s.name AS structure, m.id AS motif_id, m.mask, m.n_kept, m.n_atoms, m.sampler, "
            "d.name AS dataset, f.fit_config_id, f.status, f.rwp, f.params "
            "FROM motif m JOIN starting_model s ON s.id = m.starting_model_id "
            "LEFT JOIN fit_result f ON f.motif_id = m.id "
            "LEFT JOIN dataset d ON d.id = f.dataset_id "
        )
        if structure is None:
            return self._frame(query + "ORDER BY m.id")
        return self._frame(query + "WHERE s.name = :structure ORDER BY m.id", structure=structure)

    def trained_models(self, structure: Optional[str] = None) -> pd.DataFrame:
        """Trained surrogates with their test metrics and overall confidence."""
        query = (
            "SELECT t.id, s.name AS structure, d.name AS dataset, t.fit_config_id, t.n_motifs, t.seed, "
            "t.metrics, t.hyperparameters, t.overall_confidence, t.convergence, t.mlflow_run_id, t.created_at "
            "FROM trained_model t JOIN starting_model s ON s.id = t.starting_model_id "
            "JOIN dataset d ON d.id = t.dataset_id "
        )
        if structure is None:
            return self._frame(query + "ORDER BY t.id")
        return self._frame(query + "WHERE s.name = :structure ORDER BY t.id", structure=structure)

    def contributions(self, structure: Optional[str] = None, dataset: Optional[str] = None) -> pd.DataFrame:
        """Atom contributions (the ``contribution`` view), optionally of one structure and dataset."""
        where, params = [], {}
        if structure is not None:
            where.append("structure = :structure")
            params["structure"] = structure
        if dataset is not None:
            where.append("dataset = :dataset")
            params["dataset"] = dataset
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self._frame(f"SELECT * FROM contribution {clause}ORDER BY trained_model_id, atom_index", **params)

    def candidates(self, dataset: Optional[str] = None) -> pd.DataFrame:
        """Mined candidates (the ``mined_candidate`` view), optionally of one dataset, latest ranking first."""
        clause = "WHERE dataset = :dataset " if dataset is not None else ""
        params = {"dataset": dataset} if dataset is not None else {}
        return self._frame(f"SELECT * FROM mined_candidate {clause}ORDER BY mining_result_id DESC, rank", **params)

    def status(self) -> pd.DataFrame:
        """Per structure and dataset: motifs, fits done and failed, best Rwp, trained models."""
        return self._frame(_STATUS_QUERY)

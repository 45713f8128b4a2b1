"""Resuming an interrupted `fit` on PostgreSQL: 10^5 motifs, killed after about 2x10^4, then run again.

Run from the repository root, with a PostgreSQL server (it needs ../shared beside the repository):

    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_fit_resume.py
    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_fit_resume.py --repeats 1 --admin-url postgresql://postgres@host/postgres

For each repeat a fresh database is made; the alpha-Keggin model 109725.xyz gets
10^5 motifs, `motex-db fit` (fast recipe) is killed with SIGKILL once about
2x10^4 results are stored, and the planner's statistics are made stale on
purpose (autovacuum off, tables analysed while the catalogue was empty, as after
bulk inserts that were never analysed). Figures:

- the rerun of `motex-db fit` (process start included): motifs fitted per second;
- on that record with stale statistics, milliseconds: one whole claim of 1,024
  motifs by this version (`claim_batch`: stale claims released, look-ups, row
  locks, 1,024 claims inserted, masks read), and the candidate SELECT alone of
  the earlier one-statement query (anti-joins whose plan follows the
  statistics). Not the same work: the second is a lower bound of the earlier
  claim, shown to see whether the stale statistics make its plan degenerate.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import time
import uuid

import sqlalchemy as sa

from bench_fit import MOTEX, run as motex
from bench_pdf import DANMAX_GR, KEGGIN_XYZ

TABLES = ("motif", "fit_result", "fit_claim")


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql(sql).scalar()


def stale_statistics(engine: sa.Engine) -> None:
    """Autovacuum off on the work tables, and statistics of an empty catalogue: what bulk inserts leave behind."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in TABLES:
            connection.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            connection.exec_driver_sql(f"ANALYZE {table}")


def claim_milliseconds(url: str) -> tuple[float, float]:
    """(this version's claim_batch, the earlier one-statement query) for 1,024 motifs, each in a rolled-back
    transaction, on the record as it stands."""
    from sqlmodel import Session, select

    from motex_db.db import open_engine
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import _unfinished, claim_batch, prepare_fit, worker_id
    from motex_db.models import FitClaim, Motif

    engine = open_engine(url)
    prepared = prepare_fit(engine, "keggin", "danmax", FitSettings())
    job = prepared.job
    worker = worker_id()
    started = time.perf_counter()
    claimed = claim_batch(engine, job, worker, 1024, lease_seconds=600)
    new = (time.perf_counter() - started) * 1000
    with engine.begin() as connection:  # hand the claims back
        connection.execute(sa.delete(FitClaim).where(FitClaim.worker == worker))
    claimed_exists = (
        select(FitClaim.id)
        .where(FitClaim.motif_id == Motif.id)
        .where(FitClaim.dataset_id == job.dataset_id)
        .where(FitClaim.fit_config_id == job.fit_config_id)
        .exists()
    )
    query = _unfinished(job).where(~claimed_exists).where(Motif.id > 0).order_by(Motif.id).limit(1024)
    query = query.with_for_update(of=Motif, skip_locked=True)
    with Session(engine) as session:
        started = time.perf_counter()
        earlier = len(session.exec(query).all())
        old = (time.perf_counter() - started) * 1000
        session.rollback()
    engine.dispose()
    if len(claimed) != 1024 or earlier != 1024:
        raise SystemExit(f"claims of 1,024 expected, got {len(claimed)} and {earlier}")
    return new, old


def one_run(admin_url: str, n_motifs: int, kill_at: int) -> dict:
    name = f"motex_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    try:
        motex(url, "init")
        stale_statistics(engine)
        motex(url, "structure", "add", KEGGIN_XYZ, "--name", "keggin", "--permute", "W")
        motex(url, "data", "add", DANMAX_GR, "--name", "danmax")
        motex(url, "sample", "--structure", "keggin", "--n", n_motifs, "--seed", 1)
        first = subprocess.Popen(
            [MOTEX, "--db", url, "fit", "--structure", "keggin", "--data", "danmax"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        while count(engine, "SELECT COUNT(*) FROM fit_result") < kill_at:
            if first.poll() is not None:
                raise SystemExit("the first fit ended before it could be interrupted")
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        kept = count(engine, "SELECT COUNT(*) FROM fit_result")
        stale_statistics(engine)  # whatever the interrupted run left, the statistics say "empty"
        new_ms, old_ms = claim_milliseconds(url)
        stale_statistics(engine)
        seconds, out = motex(url, "fit", "--structure", "keggin", "--data", "danmax")
        fitted = int(re.search(r"fitted ([\d,]+) motifs", out).group(1).replace(",", ""))
        total = count(engine, "SELECT COUNT(*) FROM fit_result")
        distinct = count(engine, "SELECT COUNT(DISTINCT motif_id) FROM fit_result")
        if fitted != n_motifs - kept or total != n_motifs or distinct != n_motifs:
            raise SystemExit(f"the rerun fitted {fitted} of {n_motifs - kept}; {total} results for {distinct} motifs")
        return {"kept": kept, "fitted": fitted, "seconds": seconds, "rate": fitted / seconds, "claim_ms": new_ms, "old_claim_ms": old_ms}
    finally:
        engine.dispose()
        with admin.connect() as connection:
            for database in (name, f"{name}_mlflow"):
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=100_000)
    parser.add_argument("--kill-at", type=int, default=20_000, help="results stored before the first fit is killed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--admin-url", default=os.environ.get("MOTEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    if not KEGGIN_XYZ.is_file():
        raise SystemExit(f"needs the shared Keggin data at {KEGGIN_XYZ}")
    runs = [one_run(args.admin_url, args.motifs, args.kill_at) for _ in range(args.repeats)]
    print(f"109725.xyz, {args.motifs:,} motifs on PostgreSQL, fit killed at ~{args.kill_at:,} results, stale statistics")
    for i, r in enumerate(runs, 1):
        print(f"  run {i}: kept {r['kept']:,}, rerun fitted {r['fitted']:,} in {r['seconds']:.1f} s = {r['rate']:,.0f} fits/s; "
              f"a whole claim of 1,024: {r['claim_ms']:.0f} ms (the earlier query's SELECT alone: {r['old_claim_ms']:.0f} ms)")
    median = lambda key: statistics.median(r[key] for r in runs)
    print(f"median of {len(runs)}: rerun {median('rate'):,.0f} fits/s (target >= 1,000); a whole claim of 1,024 motifs "
          f"{median('claim_ms'):.0f} ms; the earlier query's SELECT alone {median('old_claim_ms'):.0f} ms")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()

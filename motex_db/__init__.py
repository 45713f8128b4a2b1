"""motex-db: ML-MotEx motif extraction as a database-centric experiment tracker.

For notebooks: ``motex_db.open_record(url)`` gives a :class:`motex_db.record.Record`
whose methods return pandas DataFrames.
"""

__version__ = "0.1.0"


def open_record(url=None):
    """Open the record at ``url`` (else ``$MOTEX_DB_URL``, else ``sqlite:///motex.db``)."""
    from motex_db.record import Record

    return Record(url)

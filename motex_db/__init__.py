"""motex-db: ML-MotEx motif extraction as a database-centric experiment tracker."""

__version__ = "0.1.0"

"""fer-platform: a Dagster asset-based data platform for facial-expression images (FER2013)."""

__version__ = "0.1.0"

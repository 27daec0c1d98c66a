"""Writing results: Parquet or CSV tables written by the workers, combined and committed
atomically, mzTab-M 2.0, and live metrics.
"""

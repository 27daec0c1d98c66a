"""Reading what users bring: peak tables as the field's tools write them (CSV, TSV, Parquet, gzip;
XCMS, MZmine, MS-DIAL, asari layouts) and compound libraries, checked row by row.
"""

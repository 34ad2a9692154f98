"""`laion-spark plan`: what a run of another size would cost, from what a finished run measured.

INPUT  -> a finished run directory (its manifest.json, its tables on disk, index/*/index_infos.json) and a
          target (laion5b, cc-snapshot, a number of candidates) with the cluster's shape (plan.*)
OUTPUT -> per step core-hours and wall time on that cluster, bytes read and written per table, the index
          plan and its memory at the target size, every assumption beside LAION's reported figures:
          printed as a table and written to <run_dir>/plan/<target>.json

Rooms: measured.py (a run directory -> what it measured; files only, no Spark), estimate.py (what was
measured + the assumptions + a target -> the plan, plain arithmetic), text.py (the plan -> the printed
table), job.py (prepare, run, format_report).
"""

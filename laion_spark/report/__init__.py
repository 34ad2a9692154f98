"""report: a run directory -> run_dir/report/index.html with PNG plots and sample pairs."""

"""Reports a researcher can read: the statistics behind every rate (stats), figures drawn with
matplotlib when the `report` extra is installed (plotting), and the evaluation's tables, figure
and HTML page (eval_tables, eval_figure, eval_html). The benchmarks under bench/ draw with the
same plotting helpers."""

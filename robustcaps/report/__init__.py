"""The report: the results CSVs read into tables (`tables`), plain words from the numbers (`findings`),
figures (`plots`), and results/README.md (`readme`, `write_report`)."""

from robustcaps.report.readme import write_report
from robustcaps.report.tables import load_results

__all__ = ["load_results", "write_report"]

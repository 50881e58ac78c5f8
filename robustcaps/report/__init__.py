"""The report: the results CSVs (their columns named in `columns`) read into tables (`tables`), each
headline number computed once (`headline`), plain words from the numbers (`findings`, `robustness`,
`families`), figures (`plots`), and results/README.md (`readme`, `write_report`)."""

from robustcaps.report.readme import write_report
from robustcaps.report.tables import load_results

__all__ = ["load_results", "write_report"]

"""Analysis: from run directories to tables, verdicts, the subcircuit graph and reports.

Layer 6 of 7; imports the layers below; never trains. What lives here: results (a suite's table,
expectations judged), composition, graph (the subcircuit graph), draw (its picture), explanations
(explain, compare, predict), report (markdown, tables, curves), htmlreport (report.html), discovered
(what `clamp discover` found, as a graph and a picture).
"""

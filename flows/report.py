"""The report flow: an HTML report of the run it belongs to."""

from flows._run import stage_flow
from tasks.stages import report_task

report_flow = stage_flow("report", report_task)

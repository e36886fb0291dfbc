"""The infer flow."""

from flows._run import stage_flow
from tasks.stages import infer_task

infer_flow = stage_flow("infer", infer_task)

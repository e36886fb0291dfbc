"""The preprocess flow."""

from flows._run import stage_flow
from tasks.stages import preprocess_task

preprocess_flow = stage_flow("preprocess", preprocess_task)

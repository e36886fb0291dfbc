"""The train flow."""

from flows._run import stage_flow
from tasks.stages import train_task

train_flow = stage_flow("train", train_task)

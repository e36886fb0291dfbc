"""The cluster flow."""

from flows._run import stage_flow
from tasks.stages import cluster_task

cluster_flow = stage_flow("cluster", cluster_task)

"""Ray Train's TensorFlow backend (``TF_CONFIG`` on every worker), defined where importing it is cheap.

``ray.train.tensorflow.TensorflowConfig`` lives in a package whose import imports TensorFlow, so Ray Train's
controller, which unpickles the backend config, would load TensorFlow (seconds, and hundreds of MB) only to
set an environment variable on the workers. This is the same backend without that import; the workers
import TensorFlow themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig


@dataclass
class TensorflowBackendConfig(BackendConfig):
    """Pass as ``DataParallelTrainer(backend_config=...)``: ``TensorflowTrainer`` without its import."""

    @property
    def backend_cls(self):
        return _TensorflowBackend


def set_tf_config(worker_addresses: list[str], index: int) -> None:
    """On a worker: the cluster ``MultiWorkerMirroredStrategy`` reads from ``TF_CONFIG``, and legacy Keras."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": worker_addresses},
                                          "task": {"type": "worker", "index": index}})
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


def _worker_address() -> str:
    from ray._common.network_utils import build_address
    from ray.train._internal.utils import get_address_and_port

    return build_address(*get_address_and_port())


class _TensorflowBackend(Backend):
    def on_start(self, worker_group, backend_config: TensorflowBackendConfig) -> None:
        addresses = worker_group.execute(_worker_address)
        ray.get([worker_group.execute_single_async(i, set_tf_config, worker_addresses=addresses, index=i)
                 for i in range(len(worker_group))])

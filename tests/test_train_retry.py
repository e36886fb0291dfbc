"""Found by the kill trials: a nightly run whose Ray Train controller was killed retried its training, and the
retry hung, because the killed attempt's placement group (its cleaner died with the controller) held one of the
two CPUs and Ray Data's readers got none. A training now starts by removing its job's leftover groups."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.ray]


def test_a_placement_group_left_by_a_killed_attempt_is_removed(ray_local):
    from ray.util.placement_group import placement_group

    from fusion_core.ray_runtime import remove_leftover_placement_groups

    total = ray_local.cluster_resources()["CPU"]
    leftover = placement_group([{"CPU": 1}])
    ray_local.get(leftover.ready(), timeout=60)
    assert ray_local.available_resources().get("CPU", 0) == total - 1
    assert remove_leftover_placement_groups() == 1
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) == total
    assert remove_leftover_placement_groups() == 0

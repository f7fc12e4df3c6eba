"""The coordinator's app starts and stops through FastAPI's lifespan (``on_event`` is deprecated): the
coordinator it serves is closed when the app shuts down, and building the app warns of nothing."""

from __future__ import annotations

import warnings

from fastapi.testclient import TestClient

from he_compute.coordinator import Coordinator, Settings, create_app, first_start


def test_the_app_closes_its_coordinator_at_shutdown_and_uses_no_deprecated_hook(tmp_path):
    settings = Settings(data=str(tmp_path / "data"))
    first_start(settings)
    coordinator = Coordinator(settings)
    closed = []
    real_close = coordinator.close
    coordinator.close = lambda: (closed.append(True), real_close())  # type: ignore[method-assign]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI's on_event is deprecated: using it would raise here
        app = create_app(coordinator, threads=50)
    with TestClient(app) as client:
        r = client.get("/v1/tenant")
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        assert not closed
    assert closed == [True]

"""The lakes' stand-ins (moto, fake-gcs-server, Azurite), started once per test run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.emulators import Lakes, start_lakes


@pytest.fixture(scope="session")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lakes]:
    started = start_lakes(tmp_path_factory.mktemp("lake-emulators"))
    yield started
    started.stop()

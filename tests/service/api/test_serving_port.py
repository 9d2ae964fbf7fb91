"""Serving over the index port (real SQL, real Redis): the backend is picked by
``HOTREFRESH_INDEX_BACKEND`` on both sides of the port, a backend that does not exist is refused
by name, and the serving object answers ``ready``/``status`` from its adapter."""

from __future__ import annotations

import pytest

from service.api.serving import NotReady, Serving
from service.api.serving.backends import serving_index_for
from service.api.serving.replica import Replica
from service.indexport import Change, LogPublisher, publisher_for
from service.settings import Settings
from tests.utils.writer import Writer, sql_truth

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("kind", ["auto", "flat", "ivf"])
def test_every_in_process_kind_is_the_replicated_adapter(service_settings: Settings, r, kind: str) -> None:
    settings = service_settings.model_copy(update={"index_backend": kind})
    assert isinstance(serving_index_for(settings, r), Replica)
    assert isinstance(publisher_for(settings, r), LogPublisher)


def test_a_backend_not_built_is_refused_by_name(service_settings: Settings, r) -> None:
    settings = service_settings.model_copy(update={"index_backend": "cassandra"})  # not validated: as a typo would be
    with pytest.raises(ValueError, match="no index backend 'cassandra'"):
        serving_index_for(settings, r)
    with pytest.raises(ValueError, match="no index backend 'cassandra'"):
        publisher_for(settings, r)


def test_milvus_picks_the_milvus_adapters_and_needs_its_uri(service_settings: Settings, r) -> None:
    from pydantic import ValidationError

    from service.api.serving.milvus import MilvusIndex
    from service.indexport.milvus import MilvusPublisher

    settings = service_settings.model_copy(update={"index_backend": "milvus", "milvus_uri": "http://127.0.0.1:1"})
    assert isinstance(serving_index_for(settings, r), MilvusIndex)  # connects on first use, not here
    assert isinstance(publisher_for(settings, r), MilvusPublisher)
    with pytest.raises(ValidationError, match="HOTREFRESH_MILVUS_URI"):
        Settings(index_backend="milvus", milvus_uri="")


def test_serving_is_not_ready_until_loaded_then_reports_its_status(service_settings: Settings, r) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    ids = w.add(4, "old")
    serving = Serving(service_settings, r)
    assert not serving.ready and not serving.status().ready
    with pytest.raises(NotReady):
        serving.require_ready()
    serving.load()
    serving.require_ready()
    st = serving.status()
    assert st.ready and st.query_model == "old" and st.counts == {"old": 4} and st.loaded_from == "sql"
    assert serving.items() == sql_truth(service_settings)[0]
    assert serving.model_of(ids[0]) == "old"

    # Read-your-writes: a committed change applied at once, before the log is read.
    w.delete(ids[:1])
    serving.catch_up([Change.delete(ids[:1])])
    assert serving.model_of(ids[0]) is None and serving.status().counts == {"old": 3}

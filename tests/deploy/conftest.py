"""Deploy fixtures: the queue tests' own (an emptied database of the session's Redis, and `cxr worker` processes
stopped at teardown), for the health probes run against the real worker."""

from tests.workers.conftest import redis_db_url, workers  # noqa: F401

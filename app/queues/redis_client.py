"""The Redis clients of the template, and the class RQ's worker makes its connections with.

redis-py names itself to the server (CLIENT SETINFO) on every new connection, and looks its own
version up in the installed packages' metadata each time: about 2 ms of CPU. RQ's work horse
makes its connections anew for each job, so that was several milliseconds per job. The version
is given here once."""

from typing import Any

import redis
from redis.driver_info import DriverInfo

_DRIVER = DriverInfo(lib_version=redis.__version__)


class Redis(redis.Redis):
    """redis.Redis with its version given: RQ's ``--connection-class``, whose pool workers and
    work horses connect with the pool's arguments (this one among them)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.Redis:
        return super().from_url(url, **{"driver_info": _DRIVER, **kwargs})


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    return Redis.from_url(url, **kwargs)

"""Errors of cybn.distributed (every rank of a failed collective raises one with the same message)."""


class DistributedError(RuntimeError):
    """A collective could not be done (missing transport, unusable communicator, refused buffer)."""


class CommunicatorTimeout(DistributedError, TimeoutError):
    """The other ranks did not join a collective before the communicator's timeout."""


class RankMismatchError(DistributedError, ValueError):
    """The ranks called the same collective with different channel counts, dtypes, layouts or ops."""

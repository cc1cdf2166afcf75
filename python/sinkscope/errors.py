"""Errors raised by the sinkscope client; `exit_code` is what the CLI would exit with for the same failure."""

import grpc


class SinkscopeError(Exception):
    """Base class. `code` is the gRPC status code (or None), `exit_code` the CLI's exit status for it."""

    exit_code = 1

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class UsageError(SinkscopeError):
    """The request was wrong: a bad spec, an unknown model or dataset, a job id that does not exist."""

    exit_code = 2


class UnavailableError(SinkscopeError):
    """No server at the address, no answer in time, or the queue is full."""

    exit_code = 3


class AuthError(UnavailableError):
    """The server refused the credentials (UNAUTHENTICATED or PERMISSION_DENIED)."""

    exit_code = 3


class JobFailedError(SinkscopeError):
    """The job ran and failed; `result` holds what it streamed before failing."""

    exit_code = 4

    def __init__(self, message, result=None, code=None):
        super().__init__(message, code)
        self.result = result


class JobCancelledError(JobFailedError):
    """The job was cancelled (by a client, its deadline, or a server shutdown)."""

    exit_code = 5


_USAGE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
          grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS}
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
_AUTH = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def from_rpc_error(e, target=""):
    """Maps a grpc.RpcError to the matching SinkscopeError, keeping the server's message."""
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    if code in _AUTH:
        return AuthError(f"{'not authenticated' if code == grpc.StatusCode.UNAUTHENTICATED else 'permission denied'}"
                         f": {details}", code)
    if code in _UNAVAILABLE:
        where = f" at {target}" if target else ""
        return UnavailableError(f"server unavailable{where}: {details}", code)
    if code in _USAGE:
        return UsageError(details, code)
    if code == grpc.StatusCode.CANCELLED:
        return JobCancelledError(details, code=code)
    return SinkscopeError(details, code)

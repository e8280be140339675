"""``ratls serve`` and ``ratls connect``: an attested netcat, like openssl s_server/s_client.

``ratls connect HOST PORT`` opens a mutually attested TLS connection, prints the server's
verified claims on stderr, then copies stdin to the server and the server's bytes to
stdout.  ``ratls serve --port P`` accepts attested connections: with ``--echo`` it echoes
every connection back (forever); otherwise it serves one verified connection like
``connect`` does (stdin to the peer, the peer to stdout) and exits.

Both sides attest with ``--attester`` (``snp`` by default; ``sim`` for the simulator,
``none`` to not attest) and appraise the peer against ``--policy FILE``; accepting a peer
without evidence takes ``--no-verify-peer``.  ``--mode bound`` (the default) runs the
exporter-bound exchange after the handshake; ``--mode cert`` puts the evidence in the
certificates (interoperable RA-TLS), so that ``ratls serve --mode cert --no-verify-peer``
answers any TLS client, ``openssl s_client`` included.  Exit codes are those of :mod:`ratls.cli`: 0
success, 1 the peer's evidence failed a check (``FAIL: claim: expected ..., got ...``),
2 anything else (no policy, attester unavailable, peer unreachable, peer refused us).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import trio

from ._api import CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, open_attested_stream, serve_attested
from ._attesters_registry import attester_names
from ._errors import RatlsError
from ._result import AttestationResult
from .cli import EXIT_BAD_INPUT, EXIT_OK, CliError, _Parser, _product_arg

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence

    from ._tls_stream import AttestedTLSStream

__all__ = ["DEFAULT_EOF_WAIT", "add_commands", "connect", "main", "serve"]

# After stdin ends, how long `connect` keeps copying the peer's bytes to stdout while
# none arrive (like `nc -q`).  TLS streams here cannot be half-closed, so the peer never
# learns that we are done; one second is plenty for a reply already on its way.
DEFAULT_EOF_WAIT: Final = 1.0

_CHUNK: Final = 65536
_KEY_TYPES: Final = ("ec-p256", "ec-p384", "ed25519", "rsa-3072")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attester",
        choices=attester_names(),
        default="snp",
        help="what proves this side (default: snp, this machine's SEV-SNP guest interface)",
    )
    parser.add_argument("--policy", type=Path, default=None, help="appraisal policy (TOML)")
    parser.add_argument(
        "--trust-simulator",
        action="store_true",
        help="accept the simulated AMD root (proves nothing about hardware)",
    )
    parser.add_argument(
        "--no-verify-peer",
        dest="verify_peer",
        action="store_false",
        help="accept a peer that does not attest (its evidence is not checked)",
    )
    parser.add_argument("--key-type", choices=_KEY_TYPES, default="ec-p256")
    parser.add_argument(
        "--product", type=_product_arg, default="Genoa", help="simulated product (sim)"
    )
    parser.add_argument(
        "--sim-dir", type=Path, default=None, help="where the simulator keeps its identity"
    )
    parser.add_argument(
        "--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT, metavar="SECONDS"
    )
    parser.add_argument(
        "--mode",
        choices=("bound", "cert"),
        default="bound",
        help="bound: evidence bound to the connection after the handshake (ratls peers); "
        "cert: evidence in the certificates (interoperable RA-TLS: any TLS client can "
        "connect with --no-verify-peer on the server, and read the evidence extension)",
    )


def add_commands(verbs: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
    """Register ``serve`` and ``connect`` on the top-level sub-command action.

    Args:
        verbs: the object returned by ``ArgumentParser.add_subparsers()``.
    """
    serve_p = verbs.add_parser("serve", help="accept attested TLS connections (like s_server)")
    serve_p.add_argument("--port", type=int, required=True, help="TCP port (0: pick one)")
    serve_p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    what = serve_p.add_mutually_exclusive_group()
    what.add_argument("--echo", action="store_true", help="echo every connection back, forever")
    what.add_argument(
        "--exec",
        dest="exec_command",
        metavar="CMD",
        default=None,
        help="run CMD for every verified connection, its stdin/stdout being the peer's "
        "bytes; the peer's claims are in $RATLS_PEER_CLAIMS (JSON), forever",
    )
    _common(serve_p)
    serve_p.set_defaults(handler=serve)

    connect_p = verbs.add_parser("connect", help="open an attested TLS connection (s_client)")
    connect_p.add_argument("host")
    connect_p.add_argument("port", type=int)
    connect_p.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_EOF_WAIT,
        metavar="SECONDS",
        help="after stdin ends, wait this long for more of the peer's bytes",
    )
    _common(connect_p)
    connect_p.set_defaults(handler=connect)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from ._snp_report import ProductLine

    attester_options: dict[str, Any] = {"product": ProductLine(args.product)}
    if args.sim_dir is not None:
        attester_options["sim_dir"] = args.sim_dir
    return {
        "attester": args.attester,
        "policy": args.policy if args.verify_peer else None,
        "verify_peer": args.verify_peer,
        "trust_simulator": args.trust_simulator,
        "key_type": args.key_type,
        "handshake_timeout": args.handshake_timeout,
        "attester_options": attester_options,
        "mode": args.mode,
    }


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@contextlib.contextmanager
def _flattened() -> Iterator[None]:
    """Re-raise a nursery's group of one error as that error (for the exit-code mapping)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        raise leaves[0] from None


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _describe_peer(stream: AttestedTLSStream[Any], who: str) -> None:
    result = stream.peer_attestation
    if isinstance(result, AttestationResult):
        _err(f"{who} attested: {result.summary()}")
        _err(json.dumps(result.claims(), indent=2, sort_keys=True, default=str))
    else:
        _err(f"{who} not attested (--no-verify-peer)")


async def _read_stdin(stdin: BinaryIO) -> bytes:
    # os.read returns what is there (a line typed at a terminal) instead of waiting to fill
    # the whole buffer.
    return await trio.to_thread.run_sync(os.read, stdin.fileno(), _CHUNK, abandon_on_cancel=True)


def _write_stdout(stdout: BinaryIO, data: bytes) -> None:
    stdout.write(data)
    stdout.flush()


async def _pipe(
    stream: AttestedTLSStream[Any], stdin: BinaryIO, stdout: BinaryIO, eof_wait: float | None
) -> None:
    """stdin -> stream and stream -> stdout until the peer closes (or stdin ends + wait)."""
    last_data = trio.current_time()
    stdin_done = trio.Event()

    async def upstream() -> None:
        while True:
            data = await _read_stdin(stdin)
            if not data:
                stdin_done.set()
                return
            await stream.send_all(data)

    async def downstream(cancel_scope: trio.CancelScope) -> None:
        nonlocal last_data
        while True:
            data = await stream.receive_some(_CHUNK)
            if not data:
                cancel_scope.cancel()
                return
            last_data = trio.current_time()
            await trio.to_thread.run_sync(_write_stdout, stdout, data)

    async def linger(cancel_scope: trio.CancelScope) -> None:
        if eof_wait is None:
            return
        await stdin_done.wait()
        while True:
            deadline = max(last_data, trio.current_time()) + eof_wait
            await trio.sleep_until(deadline)
            if trio.current_time() - last_data >= eof_wait:
                cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upstream)
        nursery.start_soon(downstream, nursery.cancel_scope)
        nursery.start_soon(linger, nursery.cancel_scope)


def _peer_environment(stream: AttestedTLSStream[Any]) -> dict[str, str]:
    environment = dict(os.environ)
    result = stream.peer_attestation
    if isinstance(result, AttestationResult):
        environment["RATLS_PEER_SUMMARY"] = result.summary()
        environment["RATLS_PEER_CLAIMS"] = json.dumps(result.claims(), sort_keys=True, default=str)
    else:
        environment["RATLS_PEER_SUMMARY"] = "not attested"
        environment["RATLS_PEER_CLAIMS"] = "null"
    return environment


async def _exec(stream: AttestedTLSStream[Any], command: list[str]) -> int:
    """Connect a new process's stdin/stdout to the stream; return its exit status.

    The process sees end of input when the peer closes; when the process closes its
    output (or exits) the connection is closed.
    """
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_peer_environment(stream)
    )
    assert process.stdin is not None  # noqa: S101 - asked for pipes above
    assert process.stdout is not None  # noqa: S101 - asked for pipes above
    to_process, from_process = process.stdin, process.stdout

    async def upstream() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(_CHUNK):
                await to_process.send_all(data)
        await to_process.aclose()

    async def downstream(cancel_scope: trio.CancelScope) -> None:
        while data := await from_process.receive_some(_CHUNK):
            await stream.send_all(data)
        cancel_scope.cancel()

    try:
        with _flattened():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream)
                nursery.start_soon(downstream, nursery.cancel_scope)
    finally:
        with trio.CancelScope(shield=True):
            await to_process.aclose()
            await from_process.aclose()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    return process.returncode if process.returncode is not None else -1


def _network_error(exc: BaseException, what: str) -> CliError:
    if isinstance(exc, trio.TooSlowError):
        return CliError(f"{what}: timed out")
    return CliError(f"{what}: {exc}")


async def _connect(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO) -> int:
    try:
        stream = await open_attested_stream(args.host, args.port, **_options(args))
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise _network_error(exc, f"cannot connect to {args.host}:{args.port}") from exc
    try:
        _describe_peer(stream, "server")
        with _flattened():
            await _pipe(stream, stdin, stdout, args.wait)
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise CliError(f"connection broken: {exc}") from exc
    # Say goodbye with close_notify, so the peer sees a clean end, not a truncation.
    with trio.move_on_after(CLOSE_TIMEOUT):
        await stream.aclose()
    return EXIT_OK


def connect(args: argparse.Namespace) -> int:
    """``ratls connect HOST PORT``: attested netcat client.

    Args:
        args: the parsed command line.

    Returns:
        The exit code.

    Raises:
        RatlsError: attestation failed either way, no policy, attester unavailable.
        CliError: the peer is unreachable, the connection broke, or the options do not
            fit the mode.
    """
    try:
        with _flattened():
            return trio.run(_connect, args, sys.stdin.buffer, sys.stdout.buffer)
    except ValueError as exc:  # e.g. --mode cert with an RSA key or a vTPM attester
        raise CliError(str(exc)) from exc


async def _serve(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO) -> int:
    def refused(exc: BaseException, peer: object) -> None:
        prefix = "FAIL" if isinstance(exc, RatlsError) else "error"
        _err(f"{prefix}: connection from {peer}: {exc}")

    async def echo(stream: AttestedTLSStream[trio.SocketStream]) -> None:
        _describe_peer(stream, "client")
        try:
            while data := await stream.receive_some(_CHUNK):
                await stream.send_all(data)
        except trio.BrokenResourceError as exc:
            _err(f"client connection broken: {exc}")
            return
        _err("client closed the connection")

    async def run_command(stream: AttestedTLSStream[trio.SocketStream]) -> None:
        _describe_peer(stream, "client")
        code = await _exec(stream, shlex.split(args.exec_command))
        _err(f"{args.exec_command}: exited with {code}")

    done = trio.Event()

    async def pipe_once(stream: AttestedTLSStream[trio.SocketStream]) -> None:
        if done.is_set():
            return  # a second client while the first one is served: refuse by closing
        done.set()
        _describe_peer(stream, "client")
        await _pipe(stream, stdin, stdout, None)
        nursery.cancel_scope.cancel()

    try:
        with _flattened():
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(
                        serve_attested,
                        echo if args.echo else run_command if args.exec_command else pipe_once,
                        args.port,
                        host=args.host,
                        on_handshake_error=refused,
                        **_options(args),
                    )
                )
                for listener in listeners:
                    host, port = listener.socket.getsockname()[:2]
                    _err(f"listening on {host}:{port}")
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return EXIT_OK


def serve(args: argparse.Namespace) -> int:
    """``ratls serve --port P``: attested netcat server (``--echo``: echo server).

    Args:
        args: the parsed command line.

    Returns:
        The exit code (0 on Ctrl-C).

    Raises:
        RatlsError: no policy, attester unavailable.
        CliError: the port cannot be bound, or the options do not fit the mode.
    """
    try:
        with _flattened():
            return trio.run(_serve, args, sys.stdin.buffer, sys.stdout.buffer)
    except KeyboardInterrupt:
        return EXIT_OK
    except ValueError as exc:  # e.g. --mode cert with an RSA key or a vTPM attester
        raise CliError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serve``/``connect`` alone (``python -m ratls._cli_net``), as ``ratls`` would.

    Args:
        argv: the arguments (``sys.argv[1:]`` by default).

    Returns:
        The exit code.
    """
    from ._errors import EvidenceVerificationError
    from .cli import EXIT_VERIFICATION_FAILED

    parser = _Parser(prog="ratls", description="Attested netcat.")
    add_commands(parser.add_subparsers(dest="verb", required=True, parser_class=_Parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        code: int = args.handler(args)
    except EvidenceVerificationError as exc:
        _err(f"FAIL: {exc}")
        return EXIT_VERIFICATION_FAILED
    except (RatlsError, CliError) as exc:
        _err(f"error: {exc}")
        return EXIT_BAD_INPUT
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

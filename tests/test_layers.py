"""The layering rule, checked: formats, verification and protocol modules do no I/O.

Parsers, verifiers and sans-I/O state machines must not import networking, process,
threading-for-I/O or event-loop modules, nor anything from the layers above them (attesters,
simulators, transports, apps), and must not read the clock (the time is passed in).  Imports
under ``if TYPE_CHECKING:`` are type hints only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Modules of the bottom layers (formats, verification, protocols).
PURE_MODULES = [
    "ratls/_errors.py",
    "ratls/_nopublic.py",
    "ratls/_identity_memo.py",
    "ratls/_snp_report.py",
    "ratls/_snp_certtable.py",
    "ratls/_amd_certs.py",
    "ratls/_snp_verify.py",
    "ratls/_policy.py",
    "ratls/_result.py",
    "ratls/_verify.py",
    "ratls/_tpm_structs.py",
    "ratls/_tpm_quote.py",
    "ratls/_tpm_credential.py",
    "ratls/_evidence_cert.py",
    "ratls/_exchange.py",
    "ratls/_vtpm_evidence.py",
    "ratls/_azure_hcl.py",
    "ratls/spdm/_constants.py",
    "ratls/spdm/_errors.py",
    "ratls/spdm/_codec.py",
    "ratls/spdm/_crypto.py",
    "ratls/spdm/_secured.py",
    "ratls/spdm/_transport.py",
    "ratls/spdm/_state.py",
    "ratls/spdm/_requester.py",
    "ratls/spdm/_responder.py",
    "gateway/_link.py",
    "gateway/_proxy_protocol.py",
]

#: Standard and third-party modules that mean I/O, an event loop, or a clock.
FORBIDDEN_TOP_LEVEL = {
    "trio",
    "OpenSSL",
    "socket",
    "ssl",
    "subprocess",
    "select",
    "selectors",
    "asyncio",
    "fcntl",
    "time",
    "urllib",
    "http",
}

#: ratls modules of the layers above (attesters, simulators, transports, apps).
UPPER_LAYERS = (
    "sim",
    "attesters",
    "_api",
    "_bound",
    "_attesters_registry",
    "_tls_stream",
    "_tls_context",
    "_tpm_device",
    "_cli",
    "_demo",
    "_io",
    "_tee",
    "cli",
)


def runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import that runs at run time (not under TYPE_CHECKING)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("path", PURE_MODULES)
def test_bottom_layers_do_no_io(path: str) -> None:
    source = (ROOT / path).read_text(encoding="utf-8")
    problems = []
    for line, module in runtime_imports(ast.parse(source)):
        if module.startswith("."):
            last = module.lstrip(".").split(".")[0]
            if last in UPPER_LAYERS or last.startswith("_cli"):
                problems.append(f"line {line}: imports {module} from a layer above")
        elif module.split(".")[0] in FORBIDDEN_TOP_LEVEL:
            problems.append(f"line {line}: imports {module}")
    for needle in (".now(", "time.time(", "monotonic("):
        if needle in source:
            problems.append(f"reads the clock ({needle})")
    assert not problems, f"{path}: " + "; ".join(problems)


def test_the_check_can_fail() -> None:
    tree = ast.parse("import trio\nif TYPE_CHECKING:\n    import socket\nfrom .sim import x\n")
    assert runtime_imports(tree) == [(1, "trio"), (4, ".sim")]

"""NDIF support: ship emonn's in-trace helpers by value, check requests offline the way the server treats
them, and compare versions before the first real request.

`nnsight`'s own `remote="local"` dry run only hides working-tree modules, so it passes traces that use
polars, scipy or a pip-installed package the server lacks. `StrictServerBackend` builds the request
exactly as `remote=True` does, then deserializes it with an unpickler that refuses every module (and
builtin) outside the NDIF server's whitelist, scans the traced source for imports the server's executor
would refuse, and finally runs it on the local model as the server runs it: under bfloat16 autocast with
bfloat16 as the default dtype. The whitelist, its source and its date are in `ndif_server.json`.
Use it as `model.with_remote("check")`.
"""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path
from typing import Any

import nnsight
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.intervention.serialization import CustomCloudUnpickler, loads

from emonn import EmonnError

#: What the NDIF server allows and how it runs a request (read from its public code; see "source" inside).
SERVER = json.loads((Path(__file__).parent / "ndif_server.json").read_text())
#: Modules the server's executor lets in-trace code import; modules its unpickler may resolve.
EXECUTION = SERVER["execution"]
DESERIALIZATION = SERVER["deserialization_extra"] + EXECUTION + SERVER["nnsight_client"]["modules"]


def _listed(module: str, entries: list[dict]) -> bool:
    return any(module == e["name"] or (not e["strict"] and module.startswith(e["name"] + ".")) for e in entries)


def server_has(module: str, *, executing: bool = False) -> bool:
    """Whether the server resolves `module` while deserializing a request (or, `executing=True`, lets the
    request's code import it)."""
    return _listed(module, EXECUTION if executing else DESERIALIZATION)


@functools.cache
def preflight() -> None:
    """Before the first request to NDIF: compare this environment with the server's (`nnsight.ndif.compare`)
    and stop with one line saying what to install when they differ where the server refuses or breaks: the
    Python major.minor (the server refuses another), and the nnsight version (an older client is refused,
    a newer one gets through and then fails opaquely, nnsight issue #570). Once per process."""
    from nnsight import ndif

    try:
        env = ndif.compare()
    except Exception as error:  # noqa: BLE001 - network errors come in many types
        raise EmonnError(f"cannot reach NDIF to compare versions before sending: {str(error).splitlines()[0]}"
                         ) from error
    local, remote = (".".join(v.split(".")[:2]) for v in (env.local_python, env.remote_python))
    if local != remote:
        raise EmonnError(f"NDIF runs Python {remote}, this environment Python {local}: the server refuses requests "
                         f"from another Python; run emonn under Python {remote}")
    nnsight_versions = env.packages.get("nnsight")
    if nnsight_versions and not nnsight_versions["match"]:
        raise EmonnError(f"NDIF runs nnsight {nnsight_versions['remote']}, this environment nnsight "
                         f"{nnsight_versions['local']}: pip install 'nnsight=={nnsight_versions['remote']}'")


def register_emonn() -> None:
    """Send emonn's in-trace code (`emonn.reducers`, nothing else) by value: an installed (even editable)
    emonn is not on the server, and nnsight only auto-registers modules it sees in the working tree."""
    from emonn import reducers

    nnsight.register(reducers)


class _ServerUnpickler(CustomCloudUnpickler):
    """Resolves only what the NDIF server can import; anything else is an error naming the module."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name not in SERVER["builtins"]:
            raise EmonnError(f"remote request needs builtin '{name}', which the NDIF server strips")
        if not server_has(module):
            raise EmonnError(f"remote request needs module '{module}' ({name}), which the NDIF server lacks: "
                             "keep in-trace code to torch, or register the module with nnsight.register")
        found = super().find_class(module, name)
        if (module, name) in {("cloudpickle.cloudpickle", "subimport"), ("cloudpickle.cloudpickle",
                                                                           "dynamic_subimport")}:
            return _checked_import(found)
        return found


def _checked_import(importer: Any) -> Any:
    def checked(name: str, *args: Any) -> Any:
        if not args and not server_has(name):  # dynamic_subimport (by value, with a dict) is shipped code
            raise EmonnError(f"remote request needs module '{name}', which the NDIF server lacks")
        return importer(name, *args)

    return checked


def _source_imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _source_builtins(source: str) -> set[str]:
    """Builtins the traced source reads that the server strips from the request's namespace."""
    import builtins

    names = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)]
    loaded = {node.id for node in names if isinstance(node.ctx, ast.Load)}
    assigned = {node.id for node in names if isinstance(node.ctx, ast.Store)}  # a local `bin = ...` is no builtin
    return {name for name in (loaded - assigned) & set(dir(builtins)) if name not in SERVER["builtins"]}


class StrictServerBackend(LocalSimulationBackend):
    """Serialize as `remote=True` would, deserialize as the NDIF server would (strictly), run locally."""

    #: Size of the last request, in bytes (what `remote=True` would upload).
    last_payload_bytes: int = 0

    def __call__(self, tracer: Any) -> None:
        from nnsight.schema.request import RequestModel

        register_emonn()
        blob = RequestModel.serialize(tracer, compress=False)
        StrictServerBackend.last_payload_bytes = len(blob)
        _, (source, _, _) = loads(blob, self.model._remoteable_persistent_objects(), _ServerUnpickler)
        missing = sorted(name for name in _source_imports(source) if not server_has(name, executing=True))
        if missing:
            raise EmonnError(f"remote request needs module '{missing[0]}', which the NDIF server lacks "
                             "(an import inside the trace)")
        stripped = sorted(_source_builtins(source))
        if stripped:
            raise EmonnError(f"remote request needs builtin '{stripped[0]}', which the NDIF server strips")
        with server_dtype(self.model.device.type if hasattr(self.model, "device") else "cpu"):
            super().__call__(tracer)


@functools.lru_cache(maxsize=None)
def _autocast_supported(device: str) -> bool:
    return torch.amp.is_autocast_available(device)


class server_dtype:
    """Run as the NDIF server runs a request: bfloat16 as torch's default dtype and bfloat16 autocast on the
    model's device type (the server's is cuda; here the local one)."""

    def __init__(self, device: str) -> None:
        self.device = device if _autocast_supported(device) else "cpu"

    def __enter__(self) -> None:
        self.autocast = torch.autocast(device_type=self.device, dtype=torch.bfloat16)  # may refuse: before the rest
        self.autocast.__enter__()
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)

    def __exit__(self, *exc: Any) -> None:
        torch.set_default_dtype(self.previous)
        self.autocast.__exit__(*exc)

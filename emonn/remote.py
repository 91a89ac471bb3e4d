"""NDIF support: ship emonn's in-trace helpers by value, and check requests offline before sending them.

`nnsight`'s own `remote="local"` dry run only hides working-tree modules, so it passes traces that use
polars, scipy or a pip-installed package the server lacks. `StrictServerBackend` builds the request
exactly as `remote=True` does, then deserializes it with an unpickler that refuses every module outside
the NDIF server's set and scans the traced source for imports, and finally runs it on the local model.
Use it as `model.with_remote("check")`.
"""

from __future__ import annotations

import ast
import sys
from typing import Any

import nnsight
from nnsight.intervention.backends.local import _SERVER_MODULES, LocalSimulationBackend
from nnsight.intervention.serialization import CustomCloudUnpickler, loads

from emonn import EmonnError

#: Top-level modules importable on an NDIF server: its installed set (as nnsight 0.8 lists it) plus what
#: nnsight itself needs to rebuild a request there.
SERVER_MODULES = frozenset(_SERVER_MODULES | {"cloudpickle", "pydantic", "_io", "builtins", "copyreg"})


def server_has(module: str) -> bool:
    root = module.split(".")[0]
    return root in SERVER_MODULES or root in sys.stdlib_module_names


def register_emonn() -> None:
    """Send emonn's in-trace code (`emonn.reducers`, nothing else) by value: an installed (even editable)
    emonn is not on the server, and nnsight only auto-registers modules it sees in the working tree."""
    from emonn import reducers

    nnsight.register(reducers)


class _ServerUnpickler(CustomCloudUnpickler):
    """Resolves only what the NDIF server can import; anything else is an error naming the module."""

    def find_class(self, module: str, name: str) -> Any:
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
        missing = sorted(name for name in _source_imports(source) if not server_has(name))
        if missing:
            raise EmonnError(f"remote request needs module '{missing[0]}', which the NDIF server lacks "
                             "(an import inside the trace)")
        super().__call__(tracer)

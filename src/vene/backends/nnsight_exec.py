"""What runs inside nnsight traces: vene's ops on the values nnsight's Envoys hand over.

A planned call (:class:`Job`) is a list of :class:`Pass` es, the same passes the hook backend
runs (:func:`vene.engine.run_separate`): the source passes, then the base pass (or the
``generate`` call). A pass is one ``model.trace()`` running :class:`ModelCall` (the module called on the
inputs exactly as the hook backend calls it), with one data invoke and one empty invoke (a
whole-batch worker) per hooked ``(module, io)``: each worker serves a
:class:`SiteServer` at every firing of its module, in whatever order the modules run, so no
order of sites has to be known in advance. At a firing the server reads the module's inputs
(and output) from its Envoy, runs the ops of :mod:`vene.ops` exactly as the hook backend's
:func:`vene.ops.site_hook` does (same getters, setters, collects, views, copy-on-write) and
assigns the result back to the Envoy when it changed.

For ``remote=True`` these objects travel to the NDIF server inside nnsight's request and run
there, so this module keeps to code nnsight's serializer can rebuild from source: no
zero-argument ``super()`` and no closures over ``nonlocal`` names (in the code that runs).
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..hooks import first_tensor, input_tensor
from ..ops import Live


def envoy_at(model: Any, path: str) -> Any:
    """The Envoy of the module at ``path`` (a dotted path of the wrapped module, ``""``: the root)."""
    if not path:
        return model
    module = model._module.get_submodule(path)
    envoy = model.interleaver.envoys.get(id(module))
    if envoy is None:  # pragma: no cover - nnsight wraps every module of the tree
        raise ConfigError(f"nnsight has no Envoy for the module {path!r}.")
    return envoy


def _out_of_order() -> type[BaseException]:
    from nnsight.intervention.interleaver import OutOfOrderError

    return OutOfOrderError


class StopCount:
    """Sites with getters left to fire before a source pass may stop (see :class:`SiteServer`)."""

    def __init__(self, n: int) -> None:
        self.left = n


class SiteServer:
    """The ops placed on one ``(module, io)`` in key order, run at each firing of the module
    (the logic of :func:`vene.ops.site_hook`, as an object that can travel to a server)."""

    def __init__(self, path: str, io: str, ops: list, protected: set, stop: StopCount | None) -> None:
        self.path = path
        self.io = io
        self.ops = ops
        self.protected = protected
        self.stop = stop
        self.counts_for_stop = stop is not None and any(op.reads_source for op in ops)
        self.done = False

    def act(self, x: torch.Tensor, fire: int, args: tuple, call: Any, tracer: Any) -> torch.Tensor | None:
        live = Live(x, self.io, args, self.protected)
        for op in self.ops:
            op.fired += 1
            op.act(live, fire, call)
        if self.counts_for_stop and not self.done:
            assert self.stop is not None  # counts_for_stop is set only with a StopCount
            self.done = True
            self.stop.left -= 1
            if self.stop.left <= 0:
                tracer.stop()  # every getter of this source pass has fired: stop the model here
        return live.replaced

    def serve(self, model: Any, tracer: Any, call: Any) -> None:
        """Runs in this site's worker: every firing of the module, until the run ends."""
        envoy = envoy_at(model, self.path)
        try:
            for fire in tracer.iter[:]:
                args, kwargs = envoy.inputs
                if self.io == "input":
                    x, rebuild = input_tensor(args, kwargs)
                    if x is None:
                        raise ConfigError(f"{self.path or '<model>'} was called without a tensor input to intervene on.")
                    new = self.act(x, fire, args, call, tracer)
                    if new is not None:
                        envoy.inputs = rebuild(new)
                else:
                    value = envoy.output
                    x, rebuild = first_tensor(value)
                    if x is None:
                        raise ConfigError(f"{self.path or '<model>'} returned no tensor to intervene on.")
                    new = self.act(x, fire, args, call, tracer)
                    if new is not None:
                        envoy.output = rebuild(new)
        except _out_of_order():
            # the run ended (or stopped) while this worker waited for one more firing: that
            # is how an open-ended loop over firings finishes; firings are counted on the ops
            return


class StepServer:
    """Counts the wrapped model's forward passes during ``generate`` (``counter.step``, read by
    the step gates of :mod:`vene.generation`); it runs before the site workers at each pass."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.ops: list = []

    def serve(self, model: Any, tracer: Any, call: Any) -> None:
        try:
            for _ in tracer.iter[:]:
                _ = model.inputs  # wait for the next forward pass of the model
                self.counter.step += 1
        except _out_of_order():
            return


class ModelCall:
    """What a trace runs: the wrapped module called on the call's inputs exactly as the hook
    backend calls it (``module(**inputs)`` or ``module.generate(**inputs, **kwargs)``), moved to
    the model's device. nnsight's own input handling (tokenizing, re-padding a batch, adding
    ``position_ids`` for left padding) is bypassed: the trace's one data invoke holds only a
    placeholder with the batch's rows, which this call ignores."""

    def __init__(self, model: Any, method: str | None, inputs: dict, kwargs: dict) -> None:
        self.model = model
        self.method = method
        self.inputs = inputs
        self.kwargs = kwargs

    def __call__(self, *placeholder: Any) -> Any:
        module = self.model._module
        device = self.model.device
        inputs = self.inputs
        if device is not None:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        fn = module if self.method is None else getattr(module, self.method)
        return fn(**inputs, **self.kwargs)


def _rows(inputs: dict) -> int:
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return 1


class Pass:
    """One model call (a forward pass or ``generate``) as one nnsight trace."""

    def __init__(self, inputs: dict, servers: list, want_output: bool, grad: bool | None = None,
                 fn: str | None = None, fn_kwargs: dict | None = None) -> None:
        self.inputs = inputs
        self.servers = servers
        self.want_output = want_output
        self.grad = grad  # None: keep the caller's grad mode
        self.fn = fn  # None: the model's forward (``module(**inputs)``); "generate": its generate method
        self.fn_kwargs = fn_kwargs or {}

    def run(self, model: Any, call: Any) -> Any:
        if self.grad is None:
            return self._trace(model, call)
        with torch.set_grad_enabled(self.grad):
            return self._trace(model, call)

    def _trace(self, model: Any, call: Any) -> Any:
        box: dict = {}
        placeholder = torch.zeros(_rows(self.inputs), 1)
        with model.trace(fn=ModelCall(model, self.fn, self.inputs, self.fn_kwargs)) as tracer:
            with tracer.invoke(placeholder):
                if self.want_output:
                    box["out"] = tracer.result
            for server in self.servers:
                with tracer.invoke():
                    server.serve(model, tracer, call)
        return box.get("out")


class Job:
    """The passes of one call and the call's plan (the values its ops share)."""

    def __init__(self, passes: list, call: Any) -> None:
        self.passes = passes
        self.call = call

    def run(self, model: Any) -> dict:
        outputs = []
        for p in self.passes:
            outputs.append(p.run(model, self.call))
        states = []  # per op: firings, and what its step strategy counted (generation gates)
        for p in self.passes:
            for server in p.servers:
                for op in server.ops:
                    record = getattr(op.step, "record", None)
                    states.append((op.fired, getattr(op.step, "hits", None), None if record is None else list(record)))
        return {
            "outputs": outputs,
            "collected": self.call.collected,
            "full_outputs": self.call.full_outputs,
            "states": states,
        }

"""Where a run's evaluations run: `evaluation.placement` resolved for a backend, with the reason.

- slurm: every checkpoint's evaluation is its own Slurm job (1 node x evaluation.gpus GPUs), submitted by the
  training job once the checkpoint is complete; training keeps all of its GPUs.
- alongside: beside training, on the job's own devices (the first evaluation.gpus GPUs of the first node, or
  the CPU): small models and CPU runs, where the evaluation fits next to training's peak.
- after_training: queued while training runs, evaluated on the job's GPUs once training has released them.
- devices: on GPUs the cluster profile reserves for evaluation (e.g. GPU 7 of the first node); training is
  told to use the other GPUs.

`auto` picks from the backend and the estimate (`resolve_placement`); the result, with its reason, goes into
the run's config.json (derived.evaluation), the launch scripts and the plan preview.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import DerivedEvaluation, RunConfig
from core.estimate import GB, EvalMemory, alongside_memory, evaluation_gpus, evaluation_memory

# Placements each backend can carry out (Slurm can also evaluate after training, but a job holding its whole
# allocation idle while one evaluation runs is what the slurm placement exists to avoid).
BACKEND_PLACEMENTS: dict[str, tuple[str, ...]] = {
    "slurm": ("slurm", "alongside"),
    "hostfile": ("alongside", "after_training", "devices"),
    "local": ("alongside", "after_training", "devices"),
}


class PlacementError(ValueError):
    """A placement the backend, the profile or the GPU memory cannot carry out (names the numbers)."""


@dataclass(frozen=True)
class PlacementPlan:
    """The resolved evaluation placement of one launch."""

    placement: str  # slurm | alongside | after_training | devices
    requested: str  # the config's value (auto or one of the above)
    backend: str
    gpus: int  # GPUs (or CPU processes' device) of one evaluation
    devices: tuple[int, ...]  # devices placement: GPU indices on the first node reserved for evaluation
    training_devices: tuple[int, ...]  # devices placement: the first node's GPUs training uses
    why: str
    memory: EvalMemory | None

    def derived(self) -> DerivedEvaluation:
        """What the job reads (config.json -> derived.evaluation), in the schema it reads it with."""
        return DerivedEvaluation(
            placement=self.placement, requested=self.requested, backend=self.backend, gpus=self.gpus,
            devices=self.devices, training_devices=self.training_devices, why=self.why,
            memory_gb=None if self.memory is None else round(self.memory.total / GB, 2))

    def to_json(self) -> dict[str, Any]:
        return self.derived().model_dump(mode="json")

    def describe(self) -> str:
        """Plain text for the plan preview and `config render`."""
        lines = [f"evaluation placement on {self.backend}: {self.placement}"
                 + (" (auto)" if self.requested == "auto" else ""), f"  why: {self.why}"]
        if self.memory is not None:
            m = self.memory
            lines.append(f"  memory: weights {m.weights / GB:.2f} GB + KV cache {m.kv_cache / GB:.2f} GB "
                         f"({m.sequences} sequences x ({m.prompt_tokens} prompt + {m.new_tokens} new tokens)) + "
                         f"working {m.working / GB:.2f} GB + overhead {m.overhead / GB:.2f} GB = {m.total / GB:.2f} GB"
                         f" on {m.gpus} device{'s' if m.gpus != 1 else ''}"
                         + (f" ({m.per_gpu / GB:.2f} GB each of {m.gpu_memory / GB:g} GB)" if m.gpu_memory else ""))
        if self.placement == "devices":
            lines.append(f"  evaluation GPUs on the first node: CUDA_VISIBLE_DEVICES={_csv(self.devices)}; "
                         f"training uses {_csv(self.training_devices)}")
        return "\n".join(lines)


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def parse_devices(text: str | None) -> tuple[int, ...]:
    """GPU indices from a profile's eval_devices ("7", "6,7"); raises PlacementError on anything else."""
    if not text or not str(text).strip():
        return ()
    out = []
    for part in str(text).replace(" ", "").split(","):
        if not part.isdigit():
            raise PlacementError(f"eval_devices: {text!r} is not a comma-separated list of GPU indices (e.g. 7 or 6,7)")
        out.append(int(part))
    if len(set(out)) != len(out):
        raise PlacementError(f"eval_devices: {text!r} names a GPU twice")
    return tuple(out)


def _memory(config: RunConfig, gpus: int) -> EvalMemory | None:
    if config.model.architecture is None:
        return None
    return evaluation_memory(config.model, config.cluster, config.evaluation, gpus)


def _gb(x: float) -> str:
    return f"{x / GB:.1f} GB"


def resolve_placement(config: RunConfig, backend: str, eval_devices: tuple[int, ...] = ()) -> PlacementPlan:
    """The placement this config gets on `backend` (with the profile's reserved GPUs), and why."""
    if backend not in BACKEND_PLACEMENTS:
        raise PlacementError(f"unknown backend {backend!r}")
    ev, c = config.evaluation, config.cluster
    requested = ev.placement
    have_arch = config.model.architecture is not None
    needed = evaluation_gpus(config.model, c, ev) if have_arch else (ev.gpus or 1)
    if needed is None:  # the config rules reject this; kept for configs built without them
        raise PlacementError("the evaluation does not fit on one node (see `tunedeck estimate`)")
    cpu = c.gpu_type == "cpu"
    placement, why = requested, ""
    if ev.when == "never":
        placement = requested if requested not in ("auto", "devices") else BACKEND_PLACEMENTS[backend][0]
        return PlacementPlan(placement, requested, backend, ev.gpus or needed, (), (),
                             "evaluation.when is 'never': nothing is evaluated", None)
    if requested == "auto":
        placement, why = _auto(config, backend, eval_devices, needed, cpu)
    else:
        allowed = BACKEND_PLACEMENTS[backend]
        if requested not in allowed:
            raise PlacementError(
                f"evaluation.placement {requested!r} is not available on the {backend} backend "
                f"(it offers {', '.join(allowed)}); choose one of those or auto")
        why = "evaluation.placement in the config"
        if requested == "alongside" and not cpu and have_arch and c.memory_gb is not None:
            side = alongside_memory(config.model, config.training, config.deepspeed, config.attention, c, ev)
            if side.fits is False:
                raise PlacementError(
                    f"evaluation.placement 'alongside' does not fit: training peaks at {_gb(side.training)} per GPU "
                    f"and the evaluation adds {_gb(side.evaluation)} on each of its {side.gpus} GPU"
                    f"{'s' if side.gpus != 1 else ''} ({_gb(side.training + side.evaluation)} > {c.memory_gb:g} GB); "
                    "use after_training or devices (or auto)")
    if placement == "devices":
        if not eval_devices:
            raise PlacementError(
                "evaluation.placement 'devices' needs GPUs reserved for evaluation: set the cluster profile's "
                "eval_devices (e.g. `tunedeck cluster add NAME ... --eval-devices 7`)")
        gpus = len(eval_devices)
        if ev.gpus is not None and ev.gpus != gpus:
            raise PlacementError(f"evaluation.gpus is {ev.gpus} but the profile reserves {gpus} GPU(s) for "
                                 f"evaluation (eval_devices {_csv(eval_devices)})")
        training = tuple(i for i in range(c.gpus_per_node + gpus) if i not in eval_devices)[: c.gpus_per_node]
        if len(training) < c.gpus_per_node or max(eval_devices) >= c.gpus_per_node + gpus:
            raise PlacementError(
                f"eval_devices {_csv(eval_devices)} and cluster.gpus_per_node {c.gpus_per_node} need GPUs "
                f"0..{c.gpus_per_node + gpus - 1} on the first node: the reserved ones must be among them")
        memory = _memory(config, gpus)
        if memory is not None and memory.fits is False:
            raise PlacementError(
                f"the evaluation needs {_gb(memory.total)} ({_gb(memory.per_gpu)} per GPU) but the profile reserves "
                f"{gpus} GPU(s) of {c.memory_gb:g} GB (usable {memory.usable_fraction:.0%}): reserve more "
                "eval_devices or lower evaluation.batch_size / max_new_tokens")
        why = why or "evaluation.placement in the config"
        return PlacementPlan("devices", requested, backend, gpus, tuple(eval_devices), training, why, memory)
    gpus = ev.gpus or needed
    return PlacementPlan(placement, requested, backend, gpus, (), (), why, _memory(config, gpus))


def _auto(config: RunConfig, backend: str, eval_devices: tuple[int, ...], needed: int, cpu: bool) -> tuple[str, str]:
    c, ev = config.cluster, config.evaluation
    memory = _memory(config, needed)
    size = f"{_gb(memory.total)} (weights + KV cache)" if memory is not None else "its model"
    if backend == "slurm":
        if cpu:
            return "alongside", ("slurm backend with a CPU-only config: the evaluation runs beside training in the "
                                 "job's own allocation (a separate job would only queue for the same CPUs)")
        return "slurm", (f"slurm backend: each checkpoint's evaluation is its own Slurm job on {needed} GPU"
                         f"{'s' if needed != 1 else ''} (the fewest that hold {size}), so training keeps all of "
                         f"its {c.gpus_per_node} GPUs per node")
    if eval_devices:
        return "devices", (f"the cluster profile reserves GPU(s) {_csv(eval_devices)} of the first node for "
                           "evaluation; training uses the others")
    if cpu:
        return "alongside", "CPU run: the evaluation runs beside training (it fits the machine's memory)"
    if config.model.architecture is None or c.memory_gb is None:
        return "after_training", "GPU memory or model shape unknown: evaluated once training has released the GPUs"
    side = alongside_memory(config.model, config.training, config.deepspeed, config.attention, c, ev)
    if needed == 1 and side.fits:
        return "alongside", (f"the evaluation ({size}) fits beside training on GPU 0: {_gb(side.training)} training "
                             f"peak + {_gb(side.evaluation)} = {_gb(side.training + side.evaluation)} of "
                             f"{c.memory_gb:g} GB")
    return "after_training", (
        f"the evaluation ({size}, {needed} GPU{'s' if needed != 1 else ''}) does not fit beside training's "
        f"{_gb(side.training)} peak per {c.memory_gb:g} GB GPU on {backend}: checkpoints are evaluated in turn "
        "once training has released the GPUs (reserve GPUs with the profile's eval_devices to evaluate during "
        "training)")

"""The server's side of a LoRA aggregation method during a run: aggregate, fold what the method
merges into the frozen weights, measure the aggregation error, checkpoint and save.

In the simulation the server's model is the clients' model, so a merge into its frozen weights
is what every client trains on next. What was merged is kept twice: the current frozen weights
(a checkpoint restores them bit for bit) and the running sum of the merges in float64 (the saved
adapter is the exact total change, base merges included, so it loads with plain peft). Each round's
merges also go to `merges` (a MergeLog), from which a deployment's nodes rebuild their own W.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import models
from ..algorithms import Algorithm, ClientUpdate, StateDict
from . import aggregation_error
from .base import LoraAggregation
from .factors import Stack, modules
from .merges import MergeLog


class LoraServer:
    def __init__(self, method: LoraAggregation, scale: float, num_clients: int = 0, deployed: bool = False):
        self.method = method
        self.scale = scale  # s = lora.alpha / lora.rank
        self.merges = MergeLog(num_clients, keep_tensors=deployed)  # what the clients' W lacks
        self.original: StateDict = {}  # the frozen weights before the first merge (restored after the phase)
        self.merged: StateDict = {}  # module -> sum of the merges so far, float64 (d_out x d_in)

    def aggregate(
        self,
        model,
        algorithm: Algorithm,
        state: StateDict,
        updates: list[ClientUpdate],
        seed: int,
        measure=True,
        round_index: int = 0,
    ) -> tuple[StateDict, dict[str, float]]:
        """(the next global state, the aggregation error per layer type unless not `measure`);
        merges go into `model` and into the log of round `round_index`."""
        frozen = {**models.adapter_state(model), **state} if self.method.freezes_a else state
        outcome = self.method.aggregate(algorithm, state, updates, self.scale, seed)
        # FedSA-LoRA's server never sees a B_i: no mean product to compare with
        error = {} if self.method.keeps_b or not measure else aggregation_error(updates, outcome, self.scale, frozen)
        if outcome.merged:
            dense = {name: stack.dense() for name, stack in outcome.merged.items()}
            if not self.original:
                self.original = models.base_weights(model, dense)
            for name, delta in dense.items():
                self.merged[name] = self.merged.get(name, torch.zeros_like(delta)) + delta
            models.add_to_base(model, dense)
            self.merges.add(round_index, outcome.merged)
        return outcome.state, error

    def shared(self, state: StateDict) -> StateDict:
        """The part of the trainable tensors the server holds and sends (FedSA-LoRA: A alone)."""
        return self.method.shared(state)

    def global_model(self, state: StateDict, initial: StateDict) -> StateDict:
        """The trainable tensors of the server's model: the shared ones, and the initial value of
        what the clients keep (FedSA-LoRA's B = its init: the model a new client starts from)."""
        return {**initial, **state} if self.method.keeps_b else state

    def state_dict(self, model) -> dict:
        if not self.merged:
            return {}
        return {
            "lora_merged": dict(self.merged),
            "lora_base": models.base_weights(model, self.merged),
            **self.merges.state_dict(),
        }

    def load_state_dict(self, model, state: dict) -> None:
        self.merges.load_state_dict(state)
        if state.get("lora_merged"):
            self.merged = {k: v.to(torch.float64) for k, v in state["lora_merged"].items()}
            self.original = models.base_weights(model, self.merged)  # a freshly loaded model: the originals
            models.set_base_weights(model, state["lora_base"])

    def restore(self, model) -> None:
        """The frozen weights as they were before the phase (the baselines train on the original)."""
        if self.original:
            models.set_base_weights(model, self.original)

    def save(self, model, state: StateDict, path: Path) -> bool:
        """With merges: write the whole change (merges + s B A) as an exact peft adapter; False when
        there is nothing merged (the caller saves the adapter as usual)."""
        if not self.merged:
            return False
        adapter = {**models.adapter_state(model), **state}
        totals = {}
        for module in modules(adapter):
            product = Stack.of([(self.scale, adapter[module.b_key], adapter[module.a_key])]).dense()
            totals[module.name] = self.merged.get(module.name, 0) + product
        write_exact_adapter(model, totals, path)
        return True


def write_exact_adapter(model, totals: StateDict, path: Path, tolerance: float = 1e-10) -> None:
    """A peft adapter whose B @ A is `totals[module]` for each module, to float64 rounding (singular
    values below tolerance * the largest dropped): its own rank per module (rank_pattern) and
    alpha = rank, so peft's scale is 1."""
    import copy
    import shutil

    from safetensors.torch import save_file

    state, ranks = {}, {}
    for name, total in totals.items():
        p, sigma, qt = torch.linalg.svd(total, full_matrices=False)
        k = max(1, int((sigma > tolerance * sigma[0]).sum())) if sigma.numel() and sigma[0] > 0 else 1
        root = sigma[:k].sqrt()
        state[f"{name}.lora_B.weight"] = (p[:, :k] * root).float().contiguous()
        state[f"{name}.lora_A.weight"] = (root[:, None] * qt[:k]).float().contiguous()
        ranks[name.removeprefix("base_model.model.")] = k
    config = copy.deepcopy(model.peft_config["default"])
    config.r = max(ranks.values())
    config.lora_alpha = config.r
    config.rank_pattern = dict(ranks)
    config.alpha_pattern = dict(ranks)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    config.save_pretrained(str(path))
    save_file(state, str(path / "adapter_model.safetensors"))  # the names peft's own state dict uses

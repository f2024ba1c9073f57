"""SCAFFOLD: control variates that correct each client's drift towards its own optimum.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML 2020, Algorithm 1 with option II. The server holds c, each client i its own c_i (zero at
start; it lives with the client: client state in the simulation, on the node in a deployment).
    local step:  y <- y - lr * (g_i(y) - c_i + c)                      (Algorithm 1, line 10)
    client:      c_i+ = c_i - c + (x - y_i) / (K * lr)                 (line 12, option II)
    server:      x <- x + eta_g * Delta                                (line 16)
                 c <- c + sum over S of (n_i / n) * (c_i+ - c_i)       (line 17)
Delta is the example-weighted mean of (y_i - x) over the sampled clients S, and n the number of
examples of all N clients: c stays the example-weighted mean of every c_i, as FedAvg's objective
weights clients; with equal client sizes the weight is the paper's 1/N.

How the correction meets the local optimizer. The paper's local optimizer is plain SGD, where
correcting the gradient and correcting the update are the same thing. With Adam the two differ:
Adam divides the gradient by its running RMS, so a correction added to the gradient is rescaled
and no longer moves y by lr * (c - c_i); and option II measures c_i+ from the distance travelled,
(x - y_i) / (K * lr), which under Adam is the mean *update direction*, not the mean gradient.
`correction: update` (default) therefore applies the correction after each optimizer step,
y <- y - lr * (c - c_i): the control variates and the correction live in the same units (the
optimizer's update direction), and with `train.optimizer: sgd` this is exactly the paper's
corrected gradient. `correction: gradient` adds (c - c_i) to the gradient before clipping and
the optimizer, literally as written, whatever the optimizer does with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import torch

from ..client import StepHooks
from ..names import Correction
from .base import Algorithm, ClientTask, ClientUpdate, StateDict, apply_step, to_float64

CORRECTIONS = get_args(Correction)


@dataclass
class Scaffold(Algorithm):
    """SCAFFOLD (Karimireddy et al. 2020, option II): control variates correct client drift."""

    server_lr: float = 1.0  # eta_g, the global step size
    correction: Correction = "update"  # where c - c_i enters the local step: update or gradient (see above)
    total_examples: int = 0  # n: training examples of all N clients (the weights of c's update), set by start
    control: StateDict = field(default_factory=dict, repr=False)  # c, checkpointed (float64)

    @classmethod
    def from_config(cls, fed) -> Scaffold:
        return cls(server_lr=fed.scaffold_server_lr, correction=fed.scaffold_correction)

    def start(self, client_sizes: list[int]) -> None:
        self.total_examples = sum(client_sizes)

    def server_message(self) -> StateDict:
        return {name: c.to(torch.float32) for name, c in self.control.items()}

    def client_hooks(
        self, params: dict[str, torch.nn.Parameter], task: ClientTask, client_state: StateDict
    ) -> StepHooks:
        correction = {}
        for name, p in params.items():
            c = task.message.get(name)
            c_i = client_state.get(name)
            if c is None and c_i is None:
                continue
            value = (c if c is not None else 0) - (c_i if c_i is not None else 0)
            correction[name] = torch.as_tensor(value).to(device=p.device, dtype=p.dtype)
        if not any(bool(t.any()) for t in correction.values()):
            return StepHooks()  # c = c_i = 0: plain local steps (the first round)

        if self.correction == "gradient":

            def correct_gradient():
                for name, corr in correction.items():
                    params[name].grad.add_(corr)  # g - c_i + c

            return StepHooks(after_backward=correct_gradient)

        def correct_update():
            with torch.no_grad():
                for name, corr in correction.items():
                    params[name].sub_(task.lr * corr)  # y <- y - lr * (c - c_i), after the optimizer's step

        return StepHooks(after_step=correct_update)

    def client_finish(
        self, task: ClientTask, weights: StateDict, client_state: StateDict
    ) -> tuple[StateDict, StateDict]:
        scale = 1.0 / (task.steps * task.lr)
        new_state, change = {}, {}
        for name, y in weights.items():
            x = task.global_state[name].to(torch.float32)
            c = task.message.get(name, torch.zeros_like(x))
            c_i = client_state.get(name, torch.zeros_like(x))
            new_state[name] = c_i - c + (x - y.to(torch.float32)) * scale  # option II
            change[name] = new_state[name] - c_i
        return change, new_state

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        if self.total_examples <= 0:
            raise ValueError("SCAFFOLD needs the number of examples of all clients (start(client_sizes))")
        delta = self.delta(global_state, updates)
        for name, x in global_state.items():
            c = self.control.get(name, torch.zeros_like(x, dtype=torch.float64))
            for u in updates:
                c = c + (u.num_examples / self.total_examples) * u.extras[name].to(torch.float64)
            self.control[name] = c
        return apply_step(global_state, {name: self.server_lr * d for name, d in delta.items()})

    def state_dict(self) -> dict:
        return {"control": dict(self.control)}

    def load_state_dict(self, state: dict) -> None:
        self.control = to_float64(state.get("control", {}))

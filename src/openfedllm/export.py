"""Exporting a run: the adapter with its tokenizer, or the adapter merged into the base model."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import models
from .card import readable
from .config import build
from .errors import UserError
from .rundir import read_config
from .userfiles import check_output_dir, check_safetensors


def personalized(run_dir: Path, config, client: int, adapter: Path, folder: Path) -> None:
    """FedSA-LoRA: the run's adapter with client `client`'s own B (from the federated phase's last
    checkpoint, where each client's kept tensors are), written to `folder`."""
    from safetensors.torch import load_file, save_file

    from .lora_aggregation import LORA_AGGREGATIONS
    from .lora_aggregation.base import LOCAL
    from .rundir import FEDERATED_END, load_checkpoint

    if not LORA_AGGREGATIONS[config.fed.lora_aggregation].keeps_b:
        raise UserError(
            f"export --client: {run_dir} was trained with fed.lora_aggregation {config.fed.lora_aggregation}; "
            "only fedsa keeps a model per client"
        )
    if not 0 <= client < config.fed.num_clients:
        raise UserError(f"export --client: a client id in [0, {config.fed.num_clients}), got {client}")
    checkpoint = load_checkpoint(run_dir, FEDERATED_END) or load_checkpoint(run_dir)
    if checkpoint is None or checkpoint.progress["phase"] != "federated":
        raise UserError(f"export --client: {run_dir} has no checkpoint of its federated phase")
    from .client_state import ClientStore

    # the client's state at the federation's end: on disk (ClientStore), or in an older checkpoint's client_states.pt
    at = checkpoint.progress["round"]
    store = ClientStore(run_dir / "client-state" / "federated")
    own = store.get(client, at) or checkpoint.client_states.get(client, {})
    kept = {k[len(LOCAL) :]: v for k, v in own.items() if k.startswith(LOCAL)}
    if not kept:
        raise UserError(f"export --client {client}: that client was never sampled; it holds the initial B")
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    unknown = set(kept) - set(weights)
    if unknown:
        raise UserError(f"export --client {client}: kept tensors not in the adapter: {sorted(unknown)[:2]}")
    shutil.copytree(adapter, folder)
    save_file({**weights, **{k: v.contiguous() for k, v in kept.items()}}, str(folder / "adapter_model.safetensors"))


def export(run_dir: Path, out: Path, merge: bool, client: int | None = None) -> Path:
    if not run_dir.is_dir():
        raise UserError(f"export: no such run directory: {run_dir}")
    config = build(read_config(run_dir, "export"))
    check_output_dir(out)
    base_path = models.resolve_model(config.model.name)
    tokenizer = models.load_tokenizer(base_path)
    if config.model.finetune == "full":
        source = run_dir / "model"
        if not source.is_dir():
            raise UserError(f"{run_dir}: no trained model in {source} (did the run finish?)")
        shutil.copytree(source, out, dirs_exist_ok=True)
        return out
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{run_dir}: no adapter in {adapter} (did the run finish?)")
    models.adapter_config(str(adapter))  # a readable LoRA config
    check_safetensors(adapter / "adapter_model.safetensors", f"export {run_dir}")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    own = out.with_name(f".{out.name}.client")
    try:
        if client is not None:  # the client's personalized adapter, then exported as any adapter
            shutil.rmtree(own, ignore_errors=True)
            personalized(run_dir, config, client, adapter, own)
            adapter = own
        if merge:
            from peft import PeftModel

            base = models.load_base_model(base_path, config.model.dtype)
            merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            merged.config.use_cache = True
            merged.save_pretrained(tmp)
        else:
            shutil.copytree(adapter, tmp)
        tokenizer.save_pretrained(tmp)
    finally:
        shutil.rmtree(own, ignore_errors=True)
    readable(tmp)  # for whoever the model is exported to (safetensors writes 0600)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    whose = f" of client {client}" if client is not None else ""
    print(f"wrote {'merged model' if merge else 'adapter'}{whose} to {out}")
    return out

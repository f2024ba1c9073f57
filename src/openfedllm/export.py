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


def export(run_dir: Path, out: Path, merge: bool) -> Path:
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
    if merge:
        from peft import PeftModel

        base = models.load_base_model(base_path, config.model.dtype)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(tmp)
    else:
        shutil.copytree(adapter, tmp)
    tokenizer.save_pretrained(tmp)
    readable(tmp)  # for whoever the model is exported to (safetensors writes 0600)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {'merged model' if merge else 'adapter'} to {out}")
    return out

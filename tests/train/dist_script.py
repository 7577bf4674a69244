"""Run under ``torchrun --nproc_per_node=2`` (gloo, CPU) by ``test_distributed.py``: DDP and FSDP2
training of a LoRA adapter on a tiny llama, ``kit.save`` from a sharded model, and the traps.
Writes ``result-<rank>.json`` to the directory given as the first argument."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
warnings.filterwarnings("ignore")

import adapterkit as ak  # noqa: E402
from adapterkit.errors import DistributedError  # noqa: E402
from tests.models import build  # noqa: E402

STEPS, GLOBAL_BATCH, LENGTH = 5, 4, 8


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 100, (GLOBAL_BATCH, LENGTH), generator=g) for _ in range(STEPS)]


def fresh(name: str = "a") -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = build("llama").train()
    kit = ak.AdapterKit(model)
    torch.manual_seed(1)
    kit.add(name, ak.LoRA(r=4, targets=("attn.q", "attn.v", "ffn.out")))
    with torch.no_grad():  # B non-zero too, so every parameter gets a gradient from step 1
        for p in kit.parameters(name):
            p.normal_(0, 0.05)
    return model, kit


def adapter_state(kit: ak.AdapterKit, name: str = "a") -> dict[str, torch.Tensor]:
    from adapterkit.core.distributed import full_tensor

    return {f"{h}.{n}": full_tensor(p.detach()).clone()
            for h, m in kit.record(name).modules.items() for n, p in m.named_parameters()}


def train(model, params, rows: slice) -> None:
    opt = torch.optim.AdamW(params, lr=1e-2)
    for ids in batches():
        loss = model(input_ids=ids[rows], labels=ids[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def reference() -> dict[str, torch.Tensor]:
    model, kit = fresh()
    train(model, kit.train("a"), slice(None))
    return adapter_state(kit)


def local_rows(rank: int) -> slice:
    per = GLOBAL_BATCH // dist.get_world_size()
    return slice(rank * per, (rank + 1) * per)


def ddp_state(rank: int) -> dict[str, torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, kit = fresh()
    params = kit.train("a")
    ddp = DDP(model)
    train(ddp, params, local_rows(rank))
    return adapter_state(kit)


def run_ddp(rank: int) -> dict:
    state = ddp_state(rank)
    gathered: list = [None, None]
    dist.all_gather_object(gathered, {k: v.tolist() for k, v in state.items()})
    other = {k: torch.tensor(v) for k, v in gathered[1 - rank].items()}
    return {"ranks_identical": all(torch.equal(state[k], other[k]) for k in state),
            "vs_single": max_diff(state, reference())}


def shard(model) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def run_fsdp(rank: int, out: Path) -> dict:
    from torch.distributed.tensor import DTensor

    model, kit = fresh()
    stale = kit.train("a")
    shard(model)
    live = kit.trainable_parameters("a")
    result = {"live_sharded": all(isinstance(p, DTensor) for p in live),
              "stale_list_detached": not ({id(p) for p in stale} & {id(p) for p in live})}
    train(model, live, local_rows(rank))
    state = adapter_state(kit)  # gathered on every rank
    result["vs_single"] = max_diff(state, reference())
    result["vs_ddp"] = max_diff(state, ddp_state(rank))
    kit.save("a", out / "sharded")  # every rank gathers, rank 0 writes
    ids = batches()[0][:2]
    model.eval()
    with torch.no_grad():
        sharded_out = model(input_ids=ids).logits
    dist.barrier()
    plain = build("llama").eval()
    pk = ak.AdapterKit(plain)
    pk.activate(pk.load(out / "sharded"))
    with torch.no_grad():
        result["reload_diff"] = float((plain(input_ids=ids).logits - sharded_out).abs().max())
    try:
        kit.add("late", ak.LoRA(r=2, targets=("attn.k",)))
        result["add_after_shard"] = "no error"
    except DistributedError as exc:
        result["add_after_shard"] = str(exc)
    result["late_absent"] = "late" not in kit.names
    return result


def _error_of(fn) -> str:
    try:
        fn()
    except DistributedError as exc:
        return str(exc)
    return "no error"


def run_traps(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = batches()[0][local_rows(rank)]
    model, kit = fresh()
    kit.add("b", ak.LoRA(r=2, targets=("attn.q",)))
    kit.train("a")
    for p in kit.parameters("b"):  # trainable, but "b" is not active
        p.requires_grad_(True)
    ddp = DDP(model)
    inactive = _error_of(lambda: ddp(input_ids=ids, labels=ids))

    model2, kit2 = fresh()
    kit2.add("b", ak.LoRA(r=2, targets=("attn.q",)))
    kit2.train("a")
    ddp2 = DDP(model2)
    kit2.train("b")  # after wrapping
    after_wrap = _error_of(lambda: ddp2(input_ids=ids, labels=ids))

    model3, kit3 = fresh()
    kit3.train("a")
    ddp3 = DDP(model3)
    ddp3(input_ids=ids, labels=ids).loss.backward()
    kit3.add("c", ak.LoRA(r=2, targets=("attn.k",)))
    kit3.train("c")  # after a forward under DDP
    after_forward = _error_of(lambda: ddp3(input_ids=ids, labels=ids))
    return {"inactive": inactive, "train_after_wrap": after_wrap,
            "train_after_forward": after_forward}


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    result = {"ddp": run_ddp, "traps": run_traps}[mode](rank) if mode != "fsdp" \
        else run_fsdp(rank, out)
    (out / f"{mode}-{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

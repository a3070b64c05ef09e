"""Strategy glue: how parameters are sharded, applied to an untouched model from outside.

``shard_fsdp2`` is what ``VLPModule.configure_model`` calls under Lightning's
``ModelParallelStrategy`` (FSDP2, ``fully_shard``): every block a tower lists in
``shard_units()`` becomes its own FSDP unit (gathered just before it runs, freed after), then
each tower and each objective becomes one for its remaining parameters. The model code never
branches on the strategy; it calls its blocks through their normal ``__call__`` so that the
units' hooks run (vlp.towers.pooled).
"""

from __future__ import annotations

from torch import nn


def shard_fsdp2(towers: nn.ModuleDict, objectives: nn.ModuleList, mesh) -> None:
    """Apply ``fully_shard`` over ``mesh``: tower blocks, then towers, then objectives.

    Every parameter ends up in exactly one unit (FSDP2 all-reduces only what it shards)."""
    from torch.distributed.fsdp import fully_shard

    for tower in towers.values():
        units = tower.shard_units() if callable(getattr(tower, "shard_units", None)) else []
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(tower, mesh=mesh)
    for objective in objectives:
        if any(True for _ in objective.parameters()):
            fully_shard(objective, mesh=mesh)


def data_parallel_mesh(device_mesh):
    """The data-parallel dimension of Lightning's ModelParallelStrategy mesh (the whole mesh
    when it has a single dimension)."""
    names = getattr(device_mesh, "mesh_dim_names", None) or ()
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh

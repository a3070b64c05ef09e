"""`vlp fit`: train a recipe. This module is the command's front door (its usage, and a recipe
asked for before Lightning starts); vlp.fit_cli builds and runs the LightningCLI, with the
recipe merged in (vlp.recipes)."""

from __future__ import annotations

from vlp.errors import VLPError

HELP = "train a recipe (below)"

USAGE = """\
usage: vlp fit --recipe NAME|PATH [--KEY VALUE ...] [--vars.NAME VALUE ...]

  --recipe NAME|PATH   a shipped recipe (`vlp recipes` lists them) or your own YAML file
  --KEY VALUE          override any value of the recipe: --trainer.max_steps 50, --data.batch_size 16,
                       --model.towers.text.width 32, --data.train_shards '/data/{00000..00099}.tar'
  --vars.NAME VALUE    set one of the recipe's vars, the way to reach one entry of a list
                       (e.g. --vars.ckpt_every_n_steps 10 for the StepCheckpoint callback)
  --print_config       print the merged config and exit without training
  --ckpt_path last     resume from the newest checkpoint of the run (or a checkpoint file / sharded directory)

example:
  vlp fit --recipe clip_tiny --trainer.max_steps 50 --vars.ckpt_every_n_steps 10

every option of a recipe (Lightning's full list, the recipe's values as defaults, its vars first):
  vlp fit --recipe NAME --help
"""


def main(argv: list[str]):
    """The LightningCLI after its fit (None when only the usage was printed)."""
    if not any(a.split("=", 1)[0] in ("--recipe", "--config", "-c") for a in argv):
        if "-h" in argv or "--help" in argv:
            print(USAGE, end="")
            return None
        raise VLPError("vlp fit needs a recipe: give --recipe NAME (the names: `vlp recipes`) "
                       "or --recipe path/to/recipe.yaml")
    from vlp.fit_cli import lightning_cli

    return lightning_cli(["fit", *argv])

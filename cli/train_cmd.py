"""`cxr train`: train the retrieval embedding on a labelled manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import stderr
from cli.progress import progress_bar
from services.embedding.registry import DEFAULT_SHAPE


def train(
    manifest: Annotated[
        list[Path],
        typer.Option("--manifest", help="CSV with path,label,patient_id,...; repeat to train on the union."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run folder; holds the best checkpoint (a split.json of another manifest is refused)."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="Shape: vit-tiny, vit-small, vit-base, hybrid-lite0 or hybrid-lite1 (ImageNet Lite stem)."
        ),
    ] = DEFAULT_SHAPE,
    image_size: Annotated[int, typer.Option("--image-size", min=32, help="Input side in pixels.")] = 128,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Stop after N optimiser steps.")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", min=0.1, help="Stop after M minutes.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    recipe: Annotated[
        str, typer.Option("--recipe", help="Loss preset: default, contrastive, xbm, paper, crossentropy.")
    ] = "default",
    memory_size: Annotated[int | None, typer.Option("--memory-size", min=0, help="Cross-batch memory (0=off).")] = None,
    koleo_weight: Annotated[float | None, typer.Option("--koleo-weight", min=0.0, help="KoLeo weight.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=4)] = 64,
    lr: Annotated[
        float | None, typer.Option("--lr", min=0.0, help="Peak learning rate (default: the recipe's).")
    ] = None,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", min=0)] = 100,
    stem_lr_scale: Annotated[
        float, typer.Option("--stem-lr-scale", min=0.0, help="A pretrained CNN stem learns at lr times this.")
    ] = 0.1,
    split: Annotated[Path | None, typer.Option("--split", help="Split file to reuse (default OUT/split.json).")] = None,
    holdout_source: Annotated[
        str | None, typer.Option("--holdout-source", help="Put every image of this source in test.")
    ] = None,
    init: Annotated[Path | None, typer.Option("--init", help="Hugging Face ViT checkpoint folder.")] = None,
    val_every: Annotated[int, typer.Option("--val-every", min=1)] = 200,
    ckpt_every: Annotated[int, typer.Option("--ckpt-every", min=1)] = 200,
    hflip: Annotated[bool, typer.Option("--hflip", help="Random horizontal flips (off: anatomy is sided).")] = False,
    min_class_images: Annotated[
        int, typer.Option("--min-class-images", min=1, help="Leave out classes with fewer train images.")
    ] = 20,
    sampler: Annotated[
        str,
        typer.Option(
            "--sampler", help="Batches balance label_source (labels, and sources within a label) or label only."
        ),
    ] = "label_source",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads.")] = None,
    no_bf16: Annotated[bool, typer.Option("--no-bf16", help="Train in fp32.")] = False,
) -> None:
    """Train the embedding (contrastive loss; optional cross-batch memory and KoLeo).

    The default (hybrid-lite1 at 128 px, in-batch contrastive, batches balanced by label and source) is what
    validation picked (README, Results).

    Example: cxr train --manifest data/manifest.csv --max-minutes 45 --threads 1 --out runs/hybrid128

    Several data sets: cxr train --manifest public/manifest.csv --manifest adult/manifest.csv --out runs/both
    """
    import torch

    from services.errors import CxrError
    from services.training.augment import AugmentConfig
    from services.training.config import TrainConfig
    from services.training.loop import Trainer
    from services.training.losses import LossConfig
    from services.training.recipes import RECIPES

    if threads:
        torch.set_num_threads(threads)
    if recipe not in RECIPES:
        raise typer.BadParameter(f"choose one of {', '.join(RECIPES)}", param_hint="--recipe")
    chosen = RECIPES[recipe]
    base = chosen.loss
    loss = LossConfig(
        kind=base.kind,
        memory_size=base.memory_size if memory_size is None else memory_size,
        koleo_weight=base.koleo_weight if koleo_weight is None else koleo_weight,
    )
    cfg = TrainConfig(
        manifest=tuple(manifest),
        out_dir=out,
        split_file=split,
        shape=model,
        image_size=image_size,
        init=init,
        steps=steps,
        max_minutes=max_minutes,
        batch_size=batch_size,
        lr=chosen.lr if lr is None else lr,
        warmup_steps=warmup_steps,
        stem_lr_scale=stem_lr_scale,
        loss=loss,
        augment=AugmentConfig(hflip=hflip),
        bf16=False if no_bf16 else None,
        val_every=val_every,
        ckpt_every=ckpt_every,
        seed=seed,
        min_class_images=min_class_images,
        sampler=sampler,
        holdout_source=holdout_source,
        cache_dir=out / "cache",
    )
    with progress_bar() as bar:
        task = bar.add_task("training", total=steps, status="")

        def on_step(step: int, rec: dict) -> None:
            bar.update(task, completed=step, status=f"loss {rec['loss']:.4f}  {rec['step_s'] * 1000:.0f} ms/step")

        result = Trainer(cfg, resume=resume, on_step=on_step, on_event=lambda m: bar.console.print(m)).run()
    typer.echo(
        f"{result.status}: {result.steps} steps in {result.elapsed_s / 60:.1f} min; best val MAP@R "
        f"{result.best_val_map_at_r:.4f} at step {result.best_step}; checkpoint {result.out_dir}"
    )
    if result.status == "collapsed":
        raise CxrError(result.message, "Lower --lr, or drop --memory-size/--koleo-weight; see the report.")
    if result.message:
        stderr.print(result.message)

"""`fit`: the training loop, one process or data-parallel over several (see distributed.py)."""

import copy
import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from defectmap import distributed, stopping
from defectmap.averaging import WeightAverage
from defectmap.calibration import calibrate_on_validation, choose_tile_score
from defectmap.checkpoint import atomic_write, save_checkpoint
from defectmap.config import Config, config_to_dict, resolve_config
from defectmap.data.dataset import AnomalyMixDataset, synthetic_probe
from defectmap.data.mvtec import CategoryData, open_category
from defectmap.data.synthetic import load_textures
from defectmap.data.tiles import dataset_as_trained, foregrounds_as_trained
from defectmap.engine import build_model, resolve_device, scoring_set, seed_everything
from defectmap.errors import ConfigError, DefectmapError
from defectmap.granularity import choose_granularity, synthetic_validation_scores
from defectmap.metrics import image_auroc
from defectmap.models import AnomalyModel
from defectmap.progress import bars_off
from defectmap.resume import (
    StopSignals,
    TrainState,
    load_training_state,
    restore_training_state,
    save_training_state,
)
from defectmap.text import plural
from defectmap.threshold import unreliable_rate_warning


@torch.no_grad()
def _validation_loss(model: AnomalyModel, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        total += float(model.validation_loss(batch)) * len(batch["image"])
        count += len(batch["image"])
    return total / max(count, 1)


def _probe_quality(model: AnomalyModel, probe: Dataset, batch_size: int, device: torch.device) -> dict[str, float]:
    """train.select=probe: the mean of the map-maximum image AUROC and the pixel AUROC on the synthetic probe (the
    map maximum, since a model's own score may need the calibration that follows training)."""
    scores = synthetic_validation_scores(model, probe, batch_size, device)
    quality = (scores["map_max_auroc"] + scores["pixel_auroc"]) / 2
    return {"quality": quality, "map_max_auroc": scores["map_max_auroc"], "pixel_auroc": scores["pixel_auroc"]}


def _fold_loss_sums(state: TrainState, sums: dict[str, torch.Tensor]) -> None:
    """Moves the epoch's loss sums from the device into the state, so a saved state carries them."""
    for name, value in sums.items():
        state.loss_sums[name] = state.loss_sums.get(name, 0.0) + float(value)
    sums.clear()


def _epoch_losses(state: TrainState, sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each loss term's mean over the epoch's steps (this process's batches), for history.json; resets the sums."""
    _fold_loss_sums(state, sums)
    means = {name: total / max(state.step_in_epoch, 1) for name, total in state.loss_sums.items()}
    state.loss_sums = {}
    return means


def _terms(losses: dict[str, float]) -> str:
    """The epoch line's loss terms, where the loss has more than one (DAAD+: reconstruction, adversarial, ...)."""
    terms = {name: value for name, value in losses.items() if name != "loss"}
    return " (" + ", ".join(f"{name} {value:.4g}" for name, value in terms.items()) + ")" if len(terms) > 1 else ""


def _normal_batches(train_set: Dataset, batch_size: int, device, progress: bool):
    """The training normals for `model.prepare`; the bar appears only if the model reads them (PRN's prototypes)."""
    for batch in tqdm(DataLoader(train_set, batch_size=batch_size), desc="fitting to the training normals",
                      disable=bars_off(progress), leave=False):  # fmt: skip
        yield batch["image"].to(device)


def _loaded_datasets(cfg: Config, category: CategoryData, progress: bool) -> tuple[Dataset, Dataset]:
    data = cfg.data
    if not category.val:
        warnings.warn("no validation images (data.val_fraction is 0, or there is one good training image): early "
                      "stopping and the threshold use the training images, which the model fits best, so more good "
                      "parts than train.false_reject_rate will be rejected; hold some out with data.val_fraction",
                      stacklevel=3)  # fmt: skip
    elif warning := unreliable_rate_warning(len(category.val), cfg.train.false_reject_rate):
        warnings.warn(warning, stacklevel=3)  # now, not after training: it depends on the count alone
    train_set, val_set = (
        dataset_as_trained(samples, data, cache=data.cache, progress=progress)
        for samples in (category.train, category.val or category.train)
    )
    if data.cache and not data.tile:  # decode everything up front: a bad image fails now, before any output exists
        for dataset in (train_set, val_set):
            for i in tqdm(range(len(dataset)), desc="loading images", disable=bars_off(progress), leave=False):
                dataset[i]
    return train_set, val_set


def _counted(items: Dataset, tiled: bool) -> str:
    """'N images', or with data.tile 'T tiles of N images'."""
    images = plural(len(items.samples), "image")
    return f"{plural(len(items), 'tile')} of {images}" if tiled else images


def probe_batches(cfg: Config, val_set: Dataset, device: torch.device):
    """(images, labels) batches of the validation normals with synthetic anomalies, built only when iterated."""
    probe = synthetic_probe(val_set, cfg.data.texture_dir, cfg.train.seed)
    for batch in DataLoader(probe, batch_size=cfg.train.eval_batch_size):
        yield batch["image"].to(device), batch["label"]


def calibrate_trained(cfg: Config, model: AnomalyModel, val_set: Dataset, device, progress: bool = False) -> dict:
    """After training: the error-map steps with `postprocess.choose=synthetic`, the model's own calibration on
    validation normals (the config values it chooses are written into `cfg.model`, so the checkpoint records them),
    then thresholds and normalisation."""
    if progress:
        tiles = f" ({len(val_set)} tiles)" if cfg.data.tile else ""
        tqdm.write(f"calibrating on the {len(val_set.samples)} validation normals{tiles}")
    if cfg.postprocess.choose == "synthetic":
        choose_postprocess(cfg, model, val_set, device, progress)
    model.eval()
    normals = (batch["image"].to(device) for batch in DataLoader(val_set, batch_size=cfg.train.eval_batch_size))
    chosen = model.calibrate(normals, probe_batches(cfg, val_set, device))
    for key, value in chosen.items():
        setattr(cfg.model, key, value)
        if progress:
            tqdm.write(f"calibration chose model.{key}={value}")
    normals = None  # their scores and maps, where choosing the tiled image score has them
    if cfg.data.tile and cfg.data.tile_score == "auto":
        normals = choose_tile_score(cfg, model, val_set.samples, device, progress)[1]
    rate = cfg.train.false_reject_rate
    # Thresholds hold for what test and predict score: with data.tile, whole images stitched from their tiles.
    scored = scoring_set(cfg, val_set.samples) if cfg.data.tile else val_set
    calibration = calibrate_on_validation(model, scored, cfg.train.eval_batch_size, device, rate, progress, normals)
    return {**calibration, "tile": cfg.data.tile, "tile_score": cfg.data.tile_score}


@torch.no_grad()
def choose_postprocess(cfg: Config, model: AnomalyModel, val_set: Dataset, device, progress: bool = False) -> None:
    """`postprocess.choose=synthetic`: of the four on/off combinations of normalisation and HEE (with data.tile: HEE
    on or off, normalisation off), keep the one whose
    image AUROC on the validation normals with synthetic anomalies is best (ties: the fewer steps). The model's
    filter shares `cfg.postprocess`, so the checkpoint records the choice."""
    model.eval()
    probe = list(probe_batches(cfg, val_set, device))  # the same anomalies for every combination
    labels = torch.cat([batch_labels for _, batch_labels in probe]).numpy()
    aurocs = {}
    # Position normalisation describes whole images: with data.tile only HEE is tried.
    for normalize, hee in ((False, False), (False, True), (True, False), (True, True))[: 2 if cfg.data.tile else 4]:
        model.error_filter.set_steps(normalize, hee)
        normals = (batch["image"].to(device) for batch in DataLoader(val_set, batch_size=cfg.train.eval_batch_size))
        model.calibrate(normals, probe)  # normalisation's statistics; DAAD+ also re-fits its score fusion
        scores = torch.cat([model(images).score.float().cpu() for images, _ in probe]).numpy()
        aurocs[normalize, hee] = image_auroc(labels, scores)
    normalize, hee = max(aurocs, key=aurocs.get)  # the first best
    model.error_filter.set_steps(normalize, hee)
    if progress:
        tried = ", ".join(f"normalize={n} hee={h}: {a:.3f}" for (n, h), a in aurocs.items())
        tqdm.write(f"synthetic image AUROC {tried}; chose postprocess.normalize={normalize} postprocess.hee={hee}")


def _training_sets(cfg: Config, category: CategoryData, model: AnomalyModel, train_set, val_set):
    """What the loop trains and early-stops on: normal images, or for models that learn from anomalies
    (`model.anomaly_mix`: PRN, or a reconstruction model's denoising) an anomaly mix, with a fixed synthetic one on
    the validation normals."""
    mix = model.anomaly_mix
    if cfg.data.anomalies and not model.takes_real_anomalies:
        raise ConfigError(f"data.anomalies: {cfg.method} learns from normal images only; set it to 0")
    if mix is None:
        return train_set, val_set
    data = cfg.data
    textures = load_textures(data.texture_dir, data.image_size) if data.texture_dir else []
    anomalies = None
    if category.anomalies:
        anomalies = dataset_as_trained(category.anomalies, data, cache=True)  # with data.tile: their tiles
    foregrounds = foregrounds_as_trained(data.foreground_dir, train_set) if data.foreground_dir else None
    train_mix = AnomalyMixDataset(train_set, mix, cfg.train.seed, textures, anomalies, foregrounds)
    # Checkpoints are chosen on validation normals with synthetic anomalies only: never on test images.
    val_mix = AnomalyMixDataset(val_set, replace(mix, real_share=0.0), cfg.train.seed + 1, textures, fixed=True)
    return train_mix, val_mix


def _mixed_precision(mode: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """train.amp: off | bf16 (CUDA or CPU autocast) | fp16 (CUDA only, with gradient scaling)."""
    if mode == "off":
        return None, None
    if mode == "bf16":
        return torch.bfloat16, None
    if mode == "fp16":
        if device.type != "cuda":
            raise DefectmapError("train.amp=fp16 needs a CUDA device; use bf16 on the CPU")
        return torch.float16, torch.amp.GradScaler("cuda")
    raise DefectmapError(f"train.amp must be off, bf16 or fp16, got '{mode}'")


def fit(cfg: Config | None, out_dir: str | Path, *, progress: bool = True, resume: bool = False) -> Path:
    """Train `cfg.method` on the normal images of `cfg.data`, calibrate on validation, save `model.ckpt`.

    The training state (weights, optimizers, RNG, position in the epoch, early-stopping state) is
    saved to `last.ckpt` every `train.checkpoint_every` steps, at every validated epoch end and on SIGINT or
    SIGTERM; `resume=True` continues from it and ends with the weights an uninterrupted run reaches.
    Under torchrun every process trains on its slice of each global batch of `train.batch_size`
    images; rank 0 alone writes files and shows progress.
    """
    out = Path(out_dir)
    if resume:
        saved = load_training_state(out / "last.ckpt")
        cfg = resolve_config(saved["config"])
    requested = resolve_device(cfg.train.device)
    rank, world = distributed.setup(requested)
    progress = progress and rank == 0
    category = open_category(cfg.data)
    for key, value in (("postprocess.choose", cfg.postprocess.choose), ("train.select", cfg.train.select)):
        if value in ("synthetic", "probe") and not category.val:
            raise ConfigError(f"{key}={value} needs validation images: set data.val_fraction above 0")
    if getattr(cfg.model, "granularity", None) == "auto":  # DAAD's block size, chosen on synthetic anomalies
        cfg = choose_granularity(cfg, category, out, progress)
    seed_everything(cfg.train.seed)
    if torch.are_deterministic_algorithms_enabled() != cfg.train.deterministic:  # setting it imports inductor (1 s)
        torch.use_deterministic_algorithms(cfg.train.deterministic)
    device = distributed.local_device(rank, requested)
    model = build_model(cfg).to(device)  # before decoding images: a model's own config errors come first
    model.load_weights()  # and a missing weights file
    train_set, val_set = _loaded_datasets(cfg, category, progress)
    if world > 1:
        model = distributed.convert_batchnorm(model)
        distributed.broadcast_state(model)
    fit_set, val_loss_set = _training_sets(cfg, category, model, train_set, val_set)
    # With real anomalies, fit_set is an AnomalyMixDataset (models that do not take real anomalies refuse them).
    unmarked = 0
    if category.anomalies:  # real anomalies without a marked pixel (with data.tile: without a tile that holds one)
        unmarked = len(category.anomalies) - len({fit_set.anomalies.source(i) for i in fit_set.real_indices})
    if unmarked and fit_set.mix.real_share > 0 and progress:  # with real_share 0 none is trained on anyway
        tqdm.write(f"{unmarked} of the {len(category.anomalies)} real anomalies mark no pixel: not trained on")
    batch_size = min(cfg.train.batch_size, len(train_set))
    steps = stopping.steps_per_epoch(len(train_set), batch_size)
    epochs = stopping.planned_epochs(cfg.train, steps)  # train.epochs, or more to take train.min_steps
    interval = stopping.validation_interval(cfg.train, epochs)
    if progress:  # on a few images an epoch is a few steps: say how many (README, "How many good images")
        tiled = bool(cfg.data.tile)
        trained, held_out = _counted(train_set, tiled), _counted(val_set, tiled)
        tqdm.write(stopping.schedule_line(trained, held_out, steps, epochs, interval, cfg.train))
    recipe = model.train_defaults.get("min_steps", 0)  # the steps its results were measured with
    if warning := stopping.short_run_warning(cfg.method, recipe, steps, epochs, cfg.train.min_steps):
        warnings.warn(warning, stacklevel=2)
    val_loss_loader = DataLoader(val_loss_set, batch_size=cfg.train.eval_batch_size)
    probe = synthetic_probe(val_set, cfg.data.texture_dir, cfg.train.seed) if cfg.train.select == "probe" else None
    model.prepare(_normal_batches(train_set, cfg.train.eval_batch_size, device, progress))
    if world > 1:
        distributed.broadcast_state(model)  # prototypes and memories fitted in prepare: rank 0's everywhere
    groups = model.optimizer_groups()
    scales = model.lr_scales()
    optimizers = {
        name: torch.optim.Adam(params, lr=cfg.train.lr * scales.get(name, 1.0), weight_decay=cfg.train.weight_decay)
        for name, params in groups.items()
    }
    write = rank == 0
    amp_dtype, scaler = _mixed_precision(cfg.train.amp, device)
    loss_fn = torch.compile(model.loss) if cfg.train.compile else model.loss
    state = TrainState()
    if resume:
        state = restore_training_state(saved, model, optimizers)
    average = None
    if cfg.train.ema_decay:
        average = WeightAverage(model, cfg.train.ema_decay, state.average)
        state.average = average.state  # saved with the training state, updated in place
    start = time.perf_counter() - state.seconds
    with StopSignals() as signals:
        for epoch in range(state.epoch, epochs):
            model.train()
            order = train_set.epoch_order(cfg.train.seed, epoch, batch_size, cfg.data.num_workers)
            order = order[state.step_in_epoch * batch_size :]
            order = distributed.shard_batches(order, batch_size, rank, world)
            if isinstance(fit_set, AnomalyMixDataset):
                fit_set.epoch = epoch  # new anomalies every epoch, reproducibly
            loader = DataLoader(fit_set, batch_size=batch_size // world, sampler=order,
                                num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")  # fmt: skip
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=bars_off(progress), leave=False)
            seen, epoch_start, sums = 0, time.perf_counter(), {}  # sums: loss terms on the device, not yet in state
            for batch in bar:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                if cfg.train.channels_last:
                    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = loss_fn(batch)
                # One optimizer per loss (e.g. generator, then discriminator); earlier graphs kept for later ones.
                for i, (name, optimizer) in enumerate(optimizers.items()):
                    optimizer.zero_grad(set_to_none=True)
                    loss = scaler.scale(losses[name]) if scaler else losses[name]
                    loss.backward(retain_graph=i < len(optimizers) - 1)
                    if world > 1:
                        distributed.average_gradients(groups[name], world)
                    scaler.step(optimizer) if scaler else optimizer.step()
                if scaler:
                    scaler.update()
                state.step_in_epoch, state.global_step = state.step_in_epoch + 1, state.global_step + 1
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float()
                if average:
                    average.update(model, state.global_step)
                seen += len(batch["image"])
                # Reading the loss waits for the device: on CUDA only every 10th step, so the GPU runs ahead.
                if device.type == "cpu" or state.global_step % 10 == 0:
                    value = losses["loss"].item()
                    if not math.isfinite(value):
                        raise DefectmapError(
                            f"training loss became {value} at step {state.global_step}; the last good state is "
                            f"{out / 'last.ckpt'} (if any); lower train.lr and retrain"
                        )
                    state.running = value if not state.running else 0.9 * state.running + 0.1 * value
                    rate = seen / (time.perf_counter() - epoch_start)
                    bar.set_postfix(loss=f"{state.running:.4g}", img_s=f"{rate:.1f}")
                every = cfg.train.checkpoint_every
                if write and ((every and state.global_step % every == 0) or signals.received):
                    state.seconds = time.perf_counter() - start
                    _fold_loss_sums(state, sums)
                    save_training_state(out / "last.ckpt", cfg, model, optimizers, state)
                if signals.received:
                    raise DefectmapError(
                        f"stopped by {signals.received} at step {state.global_step}; state saved to "
                        f"{out / 'last.ckpt'}: continue with `defectmap train --out {out} --resume`"
                    )
            time_up = bool(cfg.train.max_minutes) and time.perf_counter() - start > 60 * cfg.train.max_minutes
            validated = stopping.validates(epoch + 1, interval, epochs) or time_up
            val_loss, probed, improved = None, None, False
            if validated:
                with average.applied(model) if average else nullcontext():  # the weights that would be kept
                    val_loss = _validation_loss(model, val_loss_loader, device)
                    if not math.isfinite(val_loss):
                        raise DefectmapError(f"validation loss became {val_loss} at epoch {epoch + 1}; lower train.lr")
                    probed = _probe_quality(model, probe, cfg.train.eval_batch_size, device) if probe else None
                    selected = -probed["quality"] if probed else val_loss  # lower is better
                    improved = selected < state.best_loss
                    if improved:
                        state.best_loss, state.best_state = selected, copy.deepcopy(model.state_dict())
                        state.best_step = state.global_step
            state.history.append(
                {
                    "epoch": epoch + 1,
                    "step": state.global_step,  # optimizer steps so far
                    "train_loss": state.running,
                    "losses": _epoch_losses(state, sums),
                    "val_loss": val_loss,  # None: not validated (train.validate_every)
                    **({"probe": probed} if probed else {}),
                    "averaged_weights": average is not None,  # val_loss is the average's (train.ema_decay)
                    "seconds": time.perf_counter() - start,
                }
            )
            if progress and validated:
                probe_text = f"  probe {probed['quality']:.4f}" if probed else ""
                tqdm.write(f"epoch {epoch + 1}: train loss {state.running:.5g}{_terms(state.history[-1]['losses'])}  "
                           f"val loss {val_loss:.5g}{probe_text}")  # fmt: skip
            state.stale = 0 if improved else state.stale + 1
            state.epoch, state.step_in_epoch = epoch + 1, 0
            state.seconds = time.perf_counter() - start
            if write and validated:
                save_training_state(out / "last.ckpt", cfg, model, optimizers, state)
            if validated and epoch + 1 < epochs and stopping.patience_ran_out(cfg.train, state):
                if progress:
                    tqdm.write(stopping.stop_message(state, epochs))
                break
            if time_up:
                break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    calibration = calibrate_trained(cfg, model, val_set, device, progress)
    path = out / "model.ckpt"
    if not write:
        distributed.teardown()  # waits for rank 0 to finish writing
        return path
    save_checkpoint(
        path,
        model=model,
        config=config_to_dict(cfg),
        calibration=calibration,
        category=category.name,
        history=state.history,
        training_anomalies=category.anomaly_record(),
        training_normals=category.normals_record(),
        trained_files=category.trained_file_digests(),
    )
    atomic_write(out / "history.json", lambda tmp: tmp.write_text(json.dumps(state.history, indent=2)))
    distributed.teardown()
    return path

"""The model uses time: trained on BOLD windows of the demo (voxels and parcels), its
masked-token loss on held-out windows in their true order is clearly below the loss on
the same windows with their frames shuffled in time, and both beat the baselines.

The windows are cut here with numpy from the demo's normalized stores (voxel stores read
through the training reader, parcel stores through xarray): every window of ``WINDOW``
consecutive frames of the training runs, and the non-overlapping windows of each
subject's held-out run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from bidstrain.config import ParcellationConfig
from bidstrain.dataset.atlas import find_atlas, load_atlas
from bidstrain.demo.generate import ATLAS_NAME, make_atlas_demo, make_fmriprep_demo
from bidstrain.normalize import ImageInfo, normalize_bold
from bidstrain.normalize.nifti_stream import read_layout
from bidstrain.normalize.parcels import ParcelOutputs
from bidstrain.normalize.passes import ParcelJob
from bidstrain.train.data import VolumeDataset
from bidstrain.train.losses import baseline_loss, normalized_mse
from bidstrain.train.model import build_module, mask_generator
from normalize_support import image_options
from train_support import train_config

log = logging.getLogger(__name__)

SPACE = "MNI152NLin2009cAsym"
SUBJECTS = ("01", "02")
TRAINING_RUNS, HELDOUT_RUN = ("1", "2"), "3"
WINDOW, PATCH_FRAMES = 8, 2
GRID = (12, 12, 12)
STEPS, BATCH = 1000, 16
PATCH, MASK_RATIO = 4, 0.5
#: How far below the shuffled-frames loss the true-order loss must lie.
MARGIN = 0.8


def _normalize(root: Path, atlas, subject: str, run: str, out: Path) -> tuple[Path, Path]:
    func = root / f"sub-{subject}" / "func"
    stem = f"sub-{subject}_task-rest_run-{run}_space-{SPACE}_res-2"
    image = func / f"{stem}_desc-preproc_bold.nii.gz"
    mask = func / f"{stem}_desc-brain_mask.nii.gz"
    layout = read_layout(image)
    on_grid = load_atlas(atlas, layout.shape, layout.affine, image=image)
    out.mkdir(parents=True)
    parcels = ParcelOutputs(out / "parcels.zarr", out / "mean.tsv", out / "coverage.tsv", ())
    entities = {"sub": subject, "task": "rest", "run": run, "space": SPACE, "res": "2"}
    info = ImageInfo("bold", subject, entities=entities, repetition_time=2.0)
    normalize_bold(
        image,
        out / "bold.zarr",
        info,
        image_options(mask=str(mask)),
        None,
        ParcelJob(on_grid, parcels),
    )
    return out / "bold.zarr", out / "parcels.zarr"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """``{"voxels": {(subject, run): (frames, x, y, z)}, "parcels": {...: (frames, P)}}``."""
    root = tmp_path_factory.mktemp("temporal")
    make_fmriprep_demo(root / "fmriprep", runs=(*TRAINING_RUNS, HELDOUT_RUN), n_nonsteady=0)
    make_atlas_demo(root / "atlas")
    atlas = find_atlas(ParcellationConfig(ATLAS_NAME, str(root / "atlas"), None, None, None))
    series: dict[str, dict] = {"voxels": {}, "parcels": {}}
    for subject in SUBJECTS:
        for run in (*TRAINING_RUNS, HELDOUT_RUN):
            voxels, parcels = _normalize(
                root / "fmriprep", atlas, subject, run, root / f"{subject}-{run}"
            )
            frames = VolumeDataset({"bold": [str(voxels)]}, {"bold": GRID})
            volumes = frames.batch(range(len(frames)))["bold"][:, 0].numpy()
            series["voxels"][subject, run] = volumes
            with xr.open_zarr(parcels) as store:
                series["parcels"][subject, run] = np.asarray(store["data"].values, np.float32)
    return series


def windows(run: np.ndarray, stride: int) -> np.ndarray:
    """Every ``WINDOW`` consecutive frames of ``run``, ``stride`` frames apart."""
    starts = range(0, run.shape[0] - WINDOW + 1, stride)
    return np.stack([run[s : s + WINDOW] for s in starts])


def shuffled(batch: torch.Tensor, seed: int) -> torch.Tensor:
    """Each window's frames in another order (no frame left in place)."""
    rng = np.random.default_rng(seed)
    out = torch.empty_like(batch)
    for i in range(batch.shape[0]):
        order = np.roll(rng.permutation(WINDOW), 1)
        while (order == np.arange(WINDOW)).any():
            order = rng.permutation(WINDOW)
        out[i] = batch[i, order]
    return out


def train(bold_input: str, training: np.ndarray, n_parcels: int | None):
    config = train_config(
        shapes={"T1w": [8, 8, 8], "bold": list(GRID), "dwi": [8, 8, 8]},
        bold_input=bold_input,
        window=WINDOW,
        patch_frames=PATCH_FRAMES,
        patch_size=PATCH,
        embed_dim=32,
        depth=2,
        heads=4,
        mask_ratio=MASK_RATIO,
    )
    torch.manual_seed(0)
    model = build_module(config, ["bold"], n_parcels=n_parcels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    data = torch.from_numpy(training)
    model.train()
    for step in range(STEPS):
        batch = {"bold": data[rng.choice(len(data), BATCH, replace=False)]}
        output = model(batch, masks=model.token_masks(batch, mask_generator(0, step)))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def losses(model, heldout: np.ndarray) -> dict[str, float]:
    window = torch.from_numpy(heldout)
    batch = {"bold": window}
    masks = model.token_masks(batch, mask_generator(1, 0))
    where = model.head["bold"].voxels(masks["bold"])
    settings = {"normalize": "var", "eps": 1e-6}
    order = model(batch, masks=masks).loss_per_modality["bold"].item()
    mixed = shuffled(window, 2)
    shuffle = model({"bold": mixed}, masks=masks).loss_per_modality["bold"].item()
    return {
        "true order": order,
        "frames shuffled": shuffle,
        "zeros": normalized_mse(torch.zeros_like(window), window, where=where, **settings).item(),
        "mean": baseline_loss(window, where=where, **settings).item(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("bold_input", ["voxels", "parcels"])
def test_held_out_windows_in_true_order_beat_shuffled_frames(runs, bold_input):
    series = runs[bold_input]
    training = np.concatenate([windows(series[s, r], 1) for s in SUBJECTS for r in TRAINING_RUNS])
    heldout = np.concatenate([windows(series[s, HELDOUT_RUN], WINDOW) for s in SUBJECTS])
    n_parcels = training.shape[-1] if bold_input == "parcels" else None
    model = train(bold_input, training, n_parcels)
    result = losses(model, heldout)
    log.warning("%s windows, held-out loss: %s", bold_input, result)
    assert result["true order"] < MARGIN * result["frames shuffled"]
    assert result["true order"] < MARGIN * min(result["zeros"], result["mean"])

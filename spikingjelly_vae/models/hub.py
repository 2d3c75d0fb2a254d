"""The package's named weights (`registry.WEIGHTS`): what `--pretrained NAME` and
`create_model(..., pretrained=NAME)` load. Files live in `spikingjelly_vae/weights/`.

- `esvae-mnist-preview` (status "preview"): ESVAE trained 20 of the reference preset's 300 MNIST epochs.
- `<model>-<dataset>` for ESVAE, FSVAE and the ANN VAE on the four Table I datasets (status "training"):
  the full reference schedules; they get files once `sjvae reproduce` completes them.
"""
from ..registry import WeightsEntry, register_weights

PREVIEW = register_weights(WeightsEntry(
    name="esvae-mnist-preview", model="esvae", dataset="mnist", status="preview", epochs_total=300,
    epochs_reached=20,
    config={"model": "esvae", "in_channels": 1, "image_size": 32, "latent_dim": 32, "T": 16, "mmd_lambda": 0.001},
    file="esvae-mnist-preview.pt", sha256="a4ccb9677b776c03c8d1a2f67bba095ba9534bc2cfffd0c051063131a5f4e350",
    dtype="fp16",
    metrics={"mse": 0.0425, "fid": 104.8, "fad": 17.86, "mse_test2000_cpu": 0.043175},
    measured=("fp32 weights on one NVIDIA H200: mse on the 10,000 MNIST test images, fid (clean, the paper's "
              "protocol) from 5,000 samples against them, fad with the official MNIST autoencoder "
              "(results/h200_2026-11-27/). mse_test2000_cpu: these fp16 weights on a CPU, first 2,000 test "
              "images, `sjvae evaluate --pretrained esvae-mnist-preview --metrics mse --mse-num 2000 "
              "--device cpu` (seed 0). Paper after 300 epochs: MSE 0.013, FID 117.8, FAD 10.99"),
    trained=("`sjvae train --dataset mnist --device cuda --epochs 20 --num-workers 8`: the reference preset "
             "(batch 256, lr 0.003072, bottleneck 10x, AdamW wd 0.001, L 32, T 16, lambda 0.001, seed 42) "
             "stopped after 20 of its 300 epochs, 4,700 steps, 165 s on one H200; stored as fp16"),
    commit="71436b7",
    command="sjvae train --dataset mnist --epochs 20"))

for _model in ("esvae", "fsvae", "ann-vae"):
    for _dataset in ("mnist", "fashion", "cifar10", "celeba"):
        register_weights(WeightsEntry(
            name=f"{_model}-{_dataset}", model=_model, dataset=_dataset, status="training",
            epochs_total=300 if _model == "esvae" else 150,
            command=f"sjvae reproduce --dataset {_dataset} --models {_model} --out results/table1"))

"""The options certify and predict share: each is a flag and the same-named key of the run's YAML."""

from __future__ import annotations

import click


def run_options(f):
    """Options shared by certify and predict; each is also a YAML key (dashes become underscores)."""
    from .cli import Choice, layouts, list_option, presets  # here: cli imports this module's users at its end

    options = [
        click.argument("model", required=False),
        click.argument("data", required=False),
        click.option("--config", "config_path", type=click.Path(), help="YAML file with any of these options."),
        click.option(
            "--sigma",
            type=float,
            help="Noise scale in [0,1] pixel units: the std (gaussian), the half-width "
            "lambda (uniform), the scale lambda (laplace) (default: the model's rs_onnx.sigma).",
        ),
        click.option(
            "--noise",
            type=click.Choice(["gaussian", "uniform", "laplace"]),
            help="Smoothing noise (default: the model's rs_onnx.noise, else gaussian); gaussian certifies l2, "
            "uniform and laplace l1 (column radius; radius_l1/_l2/_linf in every norm).",
        ),
        click.option("--n", "n", type=int, help="Samples for the estimate (default 100000)."),
        click.option("--alpha", type=float, help="Failure probability of each answer (default 0.001)."),
        click.option(
            "--batch-size",
            help="Noisy samples per model call, or auto (default: the fastest size from "
            "a short probe, on runs of 200,000 samples or more; else 1000, fewer for inputs over 64 KiB; "
            "always within the memory available).",
        ),
        click.option("--seed", type=int, help="Seed of all noise; without it fresh entropy is drawn and recorded."),
        click.option("--device", help="auto | cpu | cuda | cuda:N (default auto: CUDA when it really works)."),
        click.option("--input-name", help="Model input to feed (needed when there are several)."),
        click.option("--output-name", help="Model output holding the class scores (needed when ambiguous)."),
        click.option(
            "--input-shape",
            help="Per-example input shape, no batch dim (3,224,224), for symbolic dims the data cannot fill "
            "(default: the data's shape).",
        ),
        click.option("--preset", type=Choice(presets()), help="Normalisation preset (values: docs/cli.md, Presets)."),
        click.option("--layout", type=Choice(layouts()), help="Model input layout."),
        click.option("--scale", type=float, help="Multiply x by this first (255 for models taking 0..255)."),
        list_option("--mean", help="Per-channel mean, scaled units (0.485,0.456,0.406 or one flag per channel)."),
        list_option("--std", help="Per-channel std, scaled units (0.229,0.224,0.225 or one flag per channel)."),
        click.option("--dtype", help="Model input dtype (default: the model's; integers are rounded and clipped)."),
        click.option(
            "--channel-order",
            type=Choice(["rgb", "bgr"]),
            help="bgr: reverse the images' R, G, B before mean/std (OpenCV/Caffe-style models; default rgb).",
        ),
        click.option(
            "--preprocessor",
            help="A Hugging Face preprocessor_config.json to take scale/mean/std/resize/crop/channel order from "
            "(default: the one beside MODEL; none: ignore it). Flags override it.",
        ),
        click.option("--start", type=int, help="First example index."),
        click.option("--end", type=int, help="Stop before this example index."),
        click.option("--skip", type=int, help="Take every skip-th example."),
        click.option(
            "--label",
            type=int,
            help="Label of a single image file given as DATA (or of every image at the top of a folder).",
        ),
        click.option(
            "--labels",
            help="Labels of an .npy DATA or of the images at the top of a folder: an .npy of "
            "integers or a text file with one integer per line.",
        ),
        click.option(
            "--classes",
            help="Class names, one per line (line number = the model's class index): names "
            "the class subfolders of a folder, or the labels of a manifest (e.g. ImageNet's synset list).",
        ),
        click.option("--path-column", help="Manifest column holding image paths (default path)."),
        click.option(
            "--label-column",
            help="Column holding labels: a manifest's (default label), or a features table's name or "
            "0-based index (default: the column 'label', else the last).",
        ),
        click.option(
            "--label-from-filename",
            is_flag=True,
            default=None,
            help="Images at the top of a folder: label from a trailing _<digits> in the file name.",
        ),
        click.option(
            "--resize",
            help="Image files: shorter side to N pixels, aspect kept, or HxW (224x224) exactly (bilinear, "
            "antialiased, as torchvision's Resize).",
        ),
        click.option(
            "--resample",
            type=Choice(["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]),
            help="Image files: the filter of --resize (default bilinear; Hugging Face cards often say bicubic).",
        ),
        click.option(
            "--center-crop",
            help="Image files: crop N or HxW pixels from the centre, after --resize "
            "(ImageNet: --resize 256 --center-crop 224).",
        ),
        click.option(
            "--noise-threads",
            type=int,
            help="Threads drawing noise (default: CPU model, a quarter of the cores, 2 to 8; CUDA, all cores but one, at most 16).",
        ),
        click.option(
            "--backend",
            type=Choice(["local", "ray"]),
            help="Where to sample: this process (default) or Ray workers (pip install 'rs-onnx[distributed]').",
        ),
        click.option(
            "--address",
            help="Ray cluster: auto, host:6379, ray://host:10001, or none for a local Ray instance "
            "(joined before any file is written; refused if unreachable).",
        ),
        click.option("--workers", type=int, help="Ray workers (default: one per GPU, else one per CPU)."),
        click.option("--gpus-per-worker", type=float, help="GPUs per Ray worker (fractions share a GPU)."),
        click.option("--cpus-per-worker", type=float, help="CPUs per Ray worker."),
        click.option(
            "--stall-timeout",
            type=float,
            help="Ray: seconds a worker may finish nothing before its work goes to the others; the run ends "
            "(resumable) when none can take over (default: 10x the slowest group so far, at least 60).",
        ),
        click.option(
            "--fp16",
            is_flag=True,
            default=None,
            help="Run a float16 conversion of the model (float32 I/O); the certificate covers that model.",
        ),
        click.option("--cuda-graph", is_flag=True, default=None, help="CUDA: replay the model as a CUDA graph."),
        click.option(
            "--device-noise/--no-device-noise",
            default=None,
            help="CUDA: draw the noise on the GPU (Philox, not reproducible from --seed); refused on CPU. "
            "Default: on for inputs of 100,000 values or more on CUDA (ImageNet size), else host noise.",
        ),
        click.option(
            "--cudnn-algo-search",
            type=Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]),
            help="CUDA: how cuDNN picks convolution algorithms (default: onnxruntime's, EXHAUSTIVE); "
            "not applicable on CPU (recorded so).",
        ),
        click.option(
            "--prefer-nhwc",
            is_flag=True,
            default=None,
            help="CUDA: the provider's NHWC convolutions (tensor cores with --fp16); not applicable on CPU.",
        ),
        click.option(
            "--tensorrt",
            is_flag=True,
            default=None,
            help="CUDA: onnxruntime's TensorRT provider first when libnvinfer.so.10 is present (else CUDA, "
            "with a warning).",
        ),
        click.option(
            "--denoiser",
            help="An ONNX denoiser to compose in front of MODEL (denoised smoothing); "
            "the preprocessing flags then describe MODEL's input.",
        ),
        click.option(
            "--audit",
            is_flag=True,
            default=None,
            help="Sound against an adversarial model: 8-bit inputs, exact grid noise added in integers, "
            "rows provably independent, fresh entropy (no --seed). See docs/audit.md.",
        ),
        click.option(
            "--audit-seed-override",
            is_flag=True,
            default=None,
            help="With --audit: accept --seed, to reproduce an earlier audit from its recorded entropy.",
        ),
        click.option("--out", type=click.Path(), help="TSV to write (and <out>.meta.json); - or none: stdout."),
        click.option(
            "--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout (needs --out)."
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted run into the same --out."),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Start over on an --out that holds rows (they are replaced once the new run has its first row).",
        ),
        click.option("--dump-config", is_flag=True, help="Print the resolved configuration as YAML and exit."),
    ]
    for option in reversed(options):
        f = option(f)
    return f

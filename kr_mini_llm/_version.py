__version__ = "0.1.0"

# torch.library.custom_op, register_fake, register_autograd and opcheck arrived in 2.4.
MIN_TORCH = (2, 4)


def check_torch_version() -> None:
    import torch

    found = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if found < MIN_TORCH:
        raise ImportError(
            f"kr_mini_llm needs torch >= {'.'.join(map(str, MIN_TORCH))}, found {torch.__version__}. "
            "Upgrade torch, then rebuild with `pip install --no-build-isolation -e .`.")

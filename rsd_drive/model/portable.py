"""A checkpoint that travels (``models/study/``): the trained heads only, the frozen encoder named
by the pinned Python package that ships it and by its SHA-256.

A training run's ``config.yaml`` points at the encoder by absolute path (one machine's
site-packages). ``make_portable`` rewrites that as ``package:<distribution>/<file>`` and records
the file's hash, so ``RiskPlanner.from_pretrained``, ``rsd-drive export``, ``rsd-drive
closedloop`` and planner_node find the encoder on any machine that installed the pinned package,
and refuse another version of it by name. The weights are copied byte for byte; the directory is
written beside its destination and renamed into place (``atomic.replace_dir``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from rsd_drive.atomic import replace_dir
from rsd_drive.hashing import file_sha256
from rsd_drive.model.config import PACKAGE_PREFIX, ModelConfig
from rsd_drive.model.spec import CONFIG_NAME, WEIGHTS_NAME

PROVENANCE_NAME = 'provenance.json'
MAX_MB = 25.0


def package_reference(path) -> str | None:
    """``package:<distribution>/<file>`` for a file that an installed distribution lists, else
    None (importlib.metadata; nothing is imported)."""
    from importlib import metadata

    path = Path(path).resolve()
    for dist in metadata.distributions():
        try:
            root = Path(dist.locate_file('')).resolve()
            rel = path.relative_to(root).as_posix()
        except (ValueError, OSError):
            continue
        if any(str(f).replace('\\', '/') == rel for f in dist.files or []):
            return f"{PACKAGE_PREFIX}{dist.metadata['Name']}/{rel}"
    return None


def portable_config(checkpoint: Path) -> tuple[ModelConfig, str | None]:
    """(the checkpoint's model config with its encoder named by package and hash, the relative
    path of an encoder that lives inside the checkpoint and travels with it, else None)."""
    cfg = ModelConfig.from_yaml(checkpoint / CONFIG_NAME)
    enc = cfg.encoder
    if enc.source == 'config':
        return cfg, None
    if not enc.in_package and not Path(enc.path).is_absolute() \
            and '..' not in Path(enc.path).parts:
        return cfg, enc.path  # save_pretrained's encoder/ of a config-built encoder
    path = enc.resolve_path(checkpoint)
    ref = enc.path if enc.in_package else package_reference(path)
    if ref is None or not path.is_file():
        raise ValueError(f'{checkpoint}: its encoder {path} is not a file of an installed Python '
                         f'package, so a copy of the checkpoint could not find it elsewhere '
                         f'(ship the encoder with it, or install it as a package)')
    enc.path, enc.sha256 = ref, file_sha256(path)
    return cfg, None


def recorded_cameras(checkpoint) -> list | None:
    """The camera order a portable checkpoint's provenance.json records, else None."""
    try:
        names = json.loads((Path(checkpoint) / PROVENANCE_NAME).read_text()).get('cameras')
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def make_portable(checkpoint, out, provenance: dict | None = None,
                  cameras: list | None = None) -> Path:
    """Write ``out``: config.yaml (encoder by package and SHA-256), the heads' model.safetensors
    (and an encoder stored inside the checkpoint, as the random one's ``encoder/``),
    provenance.json (with ``cameras``, the camera order export writes into deploy.json: a
    copy has no training index to read it from). Checks that the result loads
    and that it stays under ``MAX_MB``; ``out`` is replaced whole or not at all."""
    from rsd_drive.model.planner import RiskPlanner

    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f'{checkpoint}: not a checkpoint (no {WEIGHTS_NAME})')
    cfg, inside = portable_config(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.'))
    try:
        shutil.copyfile(checkpoint / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        if inside is not None:
            copy = shutil.copytree if (checkpoint / inside).is_dir() else shutil.copyfile
            (tmp / inside).parent.mkdir(parents=True, exist_ok=True)
            copy(checkpoint / inside, tmp / inside)
        cfg.save_yaml(tmp / CONFIG_NAME)
        record = {'source_checkpoint': str(checkpoint.resolve()),
                  'weights_sha256': file_sha256(tmp / WEIGHTS_NAME),
                  'encoder': {'path': cfg.encoder.path, 'sha256': cfg.encoder.sha256},
                  'cameras': list(cameras) if cameras else None, **(provenance or {})}
        (tmp / PROVENANCE_NAME).write_text(json.dumps(record, indent=1, default=str) + '\n')
        size_mb = sum(p.stat().st_size for p in tmp.rglob('*') if p.is_file()) / 2 ** 20
        if size_mb > MAX_MB:
            raise ValueError(f'{checkpoint}: the portable copy is {size_mb:.1f} MB, over '
                             f'{MAX_MB:.0f} MB')
        RiskPlanner.from_pretrained(tmp)  # the encoder resolves, its hash and the heads fit
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

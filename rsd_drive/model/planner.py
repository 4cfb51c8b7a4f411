"""RiskPlanner: frozen encoder -> BEV adapter -> planner -> GRU waypoints, plus the RiskHead.

One file, read top to bottom:

1. ``FrozenEncoder`` (encoder.py) turns every camera image into patch tokens (never trained).
2. Each token gets a 3D position embedding from its camera ray (PETR-style), computed in the graph
   from the intrinsics and camera->base_link extrinsics: calibration is an input, not a constant.
3. ``BEV adapter``: a grid of learnable BEV queries cross-attends to all cameras' tokens
   (FROST-Drive's learnable-query adapter, laid out on the ground so RSD has a BEV map).
4. ``Planner``: learnable ego queries + an intent token + a past-state token attend to the BEV.
5. ``GRUDecoder``: 20 autoregressive waypoint deltas at 4 Hz, summed into base_link waypoints.
6. ``RiskHead``: convolutions on the BEV map -> risk grid in [0, 1] (RSD's distillation target).

Only plain ops (linear, attention, conv, resize), so the whole graph exports to ONNX and TensorRT
without plugins.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsd_drive.model.config import ModelConfig
from rsd_drive.model.encoder import FrozenEncoder, build_encoder
from rsd_drive.model.spec import CONFIG_NAME, INPUT_NAMES, OUTPUT_NAMES, WEIGHTS_NAME  # noqa: F401

POSITION_SCALE = 40.0  # metres; keeps 3D coordinates fed to embeddings near unit scale


class MLP(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class Attention(nn.Module):
    """Multi-head attention. Inference and export use plain matmuls (the graph exports
    identically everywhere); training uses torch's fused ``scaled_dot_product_attention``, the
    same function without the [B, h, Lq, Lk] matrix in memory (faster backward on a CPU)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, q, k, v):
        B, Lq, D = q.shape
        h = self.heads

        def split(x):
            return x.view(B, -1, h, D // h).transpose(1, 2)

        q, k, v = split(self.q(q)), split(self.k(k)), split(self.v(v))
        if self.training and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            out = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * (D // h) ** -0.5).softmax(dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(B, Lq, D))


class DecoderBlock(nn.Module):
    """Pre-norm block: self-attention over queries, cross-attention to memory, MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2, self.ln_mem, self.ln3 = (nn.LayerNorm(d) for _ in range(4))
        self.self_attn = Attention(d, heads)
        self.cross_attn = Attention(d, heads)
        self.mlp = MLP(d, 4 * d, d)

    def forward(self, x, x_pos, memory, memory_pos):
        h = self.ln1(x) + x_pos
        x = x + self.self_attn(h, h, self.ln1(x))
        m = self.ln_mem(memory)
        x = x + self.cross_attn(self.ln2(x) + x_pos, m + memory_pos, m)
        return x + self.mlp(self.ln3(x))


class GRUCell(nn.Module):
    """A GRU cell from linear layers (ONNX/TensorRT export without RNN ops)."""

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.x2h = nn.Linear(d_in, 3 * d_hidden)
        self.h2h = nn.Linear(d_hidden, 3 * d_hidden)

    def forward(self, x, h):
        xr, xz, xn = self.x2h(x).chunk(3, dim=-1)
        hr, hz, hn = self.h2h(h).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class GRUDecoder(nn.Module):
    """Autoregressive waypoint deltas; each step sees the previous delta and the plan context.

    Deltas are residuals on a constant-velocity step (v0 / f along x), so an untrained decoder
    already drives straight at the current speed and learning only has to add the manoeuvre.
    """

    def __init__(self, d_ctx: int, d_hidden: int, steps: int, frequency_hz: float):
        super().__init__()
        self.steps, self.frequency_hz = steps, frequency_hz
        self.init_h = nn.Linear(d_ctx, d_hidden)
        self.cell = GRUCell(2 + d_ctx, d_hidden)
        self.head = nn.Linear(d_hidden, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ctx, speed, base=None):
        """``base`` [B, steps, 2]: the path the deltas are residuals on (default: straight at
        ``speed``, the constant-velocity step)."""
        h = torch.tanh(self.init_h(ctx))
        cv_step = torch.stack([speed / self.frequency_hz, torch.zeros_like(speed)], dim=-1)
        if base is None:
            base_steps = [cv_step] * self.steps
        else:
            base_deltas = torch.cat([base[:, :1], base[:, 1:] - base[:, :-1]], dim=1)
            base_steps = base_deltas.unbind(1)
        prev = base_steps[0]
        deltas = []
        for k in range(self.steps):
            h = self.cell(torch.cat([prev, ctx], dim=-1), h)
            prev = base_steps[k] + self.head(h)
            deltas.append(prev)
        return torch.cumsum(torch.stack(deltas, dim=1), dim=1)


class RiskHead(nn.Module):
    """BEV feature map [B, d, S, S] -> risk grid [B, rows, cols] in [0, 1].

    Convolutions run at the BEV resolution and at 2x; the logits are then resized to the grid,
    which keeps the head cheap when the grid is much finer than the BEV queries.
    """

    def __init__(self, d: int, bev_size: int, rows: int, cols: int):
        super().__init__()
        self.size, self.mid = (rows, cols), (2 * bev_size, 2 * bev_size)
        self.conv1 = nn.Conv2d(d, d // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(d // 2, d // 4, 3, padding=1)
        self.out = nn.Conv2d(d // 4, 1, 1)
        nn.init.constant_(self.out.bias, -3.0)  # start near "no risk", the common cell value

    def forward(self, bev):
        x = F.gelu(self.conv1(bev))
        x = F.interpolate(x, size=self.mid, mode='bilinear', align_corners=False)
        x = self.out(F.gelu(self.conv2(x)))
        x = F.interpolate(x, size=self.size, mode='bilinear', align_corners=False)
        return torch.sigmoid(x)[:, 0]


# Trainable-weight names of earlier checkpoints -> today's (module attributes renamed, weights
# unchanged): model.safetensors written before issue 18 still loads.
LEGACY_KEY_PREFIXES = (('planner.', 'ego_blocks.'),)


def rename_legacy_keys(state: dict) -> dict:
    """``state`` with every key under an old prefix of LEGACY_KEY_PREFIXES renamed."""
    out = {}
    for key, value in state.items():
        for old, new in LEGACY_KEY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


class RiskPlanner(nn.Module):
    def __init__(self, config: ModelConfig, encoder: FrozenEncoder | None = None, base_dir=None):
        super().__init__()
        self.config = c = config
        hw = (c.image_height, c.image_width)
        self.encoder = encoder if encoder is not None else build_encoder(c.encoder, hw, base_dir)
        mean = getattr(self.encoder, 'image_mean', None)
        std = getattr(self.encoder, 'image_std', None)
        if mean is not None and (mean, std) != (c.encoder.image_mean, c.encoder.image_std):
            # The tower's own normalisation (preprocessor_config.json) is what runs: record it.
            self.config = c = replace(c, encoder=replace(c.encoder, image_mean=mean,
                                                         image_std=std))
        d = c.d_model

        # Patch-centre pixel coordinates of the token grid, in model-input pixels.
        gh, gw = self.encoder.token_grid(hw)
        stride_y, stride_x = c.image_height / gh, c.image_width / gw
        v, u = torch.meshgrid((torch.arange(gh) + 0.5) * stride_y,
                              (torch.arange(gw) + 0.5) * stride_x, indexing='ij')
        self.register_buffer('token_uv', torch.stack([u.flatten(), v.flatten()], -1),
                             persistent=False)
        self.register_buffer('ray_depths', torch.tensor(c.ray_depths), persistent=False)

        # BEV query cell centres over the risk grid's whole extent (each axis divided by
        # bev_size, so a non-square grid is covered too).
        xs, ys = c.grid.resampled_centers(c.bev_size, c.bev_size)
        bev_xy = torch.from_numpy(np.stack([xs.ravel(), ys.ravel()], -1)).float() / POSITION_SCALE
        self.register_buffer('bev_xy', bev_xy, persistent=False)

        if c.use_cameras:  # the ego-status-only planner has no camera path at all
            self.token_proj = nn.Sequential(nn.LayerNorm(self.encoder.hidden_size),
                                            nn.Linear(self.encoder.hidden_size, d))
            self.ray_embed = MLP(3 * len(c.ray_depths), d, d)
            self.adapter = nn.ModuleList(DecoderBlock(d, c.num_heads)
                                         for _ in range(c.adapter_layers))
        self.bev_queries = nn.Parameter(torch.randn(c.bev_size * c.bev_size, d) * 0.02)
        self.bev_pos = MLP(2, d, d)

        self.ego_queries = nn.Parameter(torch.randn(c.num_ego_queries, d) * 0.02)
        self.intent_embed = nn.Embedding(c.num_intents, d)
        self.past_embed = MLP(4 * c.past_steps, d, d)
        if c.route_points:  # the route token: its embedding, or "no route" where the mask is off
            self.route_embed = MLP(2 * c.route_points, d, d)
            self.no_route = nn.Parameter(torch.zeros(d))
            times = torch.arange(1, c.future_steps + 1, dtype=torch.float32) / c.frequency_hz
            self.register_buffer('plan_times', times, persistent=False)
        self.plan_pos = nn.Parameter(torch.zeros(c.num_ego_queries + 2 + bool(c.route_points),
                                                 d))
        # ego queries + intent/past/route tokens attend to themselves and to the BEV tokens
        self.ego_blocks = nn.ModuleList(DecoderBlock(d, c.num_heads)
                                        for _ in range(c.planner_layers))
        self.plan_norm = nn.LayerNorm(d)
        self.decoder = GRUDecoder(d, d, c.future_steps, c.frequency_hz)
        self.risk_head = RiskHead(d, c.bev_size, c.grid.rows, c.grid.cols)

    # -- pieces ---------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, N, 3, H, W] in [0, 1] -> frozen tokens [B, N, P, C]."""
        B, N = images.shape[:2]
        tokens = self.encoder(images.flatten(0, 1))
        return tokens.view(B, N, tokens.shape[1], tokens.shape[2])

    def ray_embedding(self, intrinsics, cam_to_ego):
        """3D points along each token's ray in base_link -> [B, N, P, d]."""
        fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]
        cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
        # Analytic K^-1 of a pinhole (no matrix inverse op in the graph): optical ray with z = 1.
        x = (self.token_uv[:, 0] - cx) / fx
        y = (self.token_uv[:, 1] - cy) / fy
        ray = torch.stack([x, y, torch.ones_like(x)], dim=-1)                  # [B, N, P, 3]
        R, t = cam_to_ego[..., :3, :3], cam_to_ego[..., :3, 3]
        ray_ego = ray @ R.transpose(-1, -2)                                    # [B, N, P, 3]
        pts = t[:, :, None, None, :] + ray_ego[:, :, :, None, :] * self.ray_depths[:, None]
        return self.ray_embed(pts.flatten(-2) / POSITION_SCALE)

    def plan_from_features(self, features, intrinsics, cam_to_ego, past_states, intent,
                           route=None, route_valid=None):
        """Everything after the frozen encoder (training on cached features starts here)."""
        B = features.shape[0]
        bev = self.bev_queries.expand(B, -1, -1)
        bev_pos = self.bev_pos(self.bev_xy).expand(B, -1, -1)
        if self.config.use_cameras:
            memory = self.token_proj(features).flatten(1, 2)                   # [B, N*P, d]
            memory_pos = self.ray_embedding(intrinsics, cam_to_ego).flatten(1, 2)
            for block in self.adapter:
                bev = block(bev, bev_pos, memory, memory_pos)
        else:
            bev = bev + self._interface_anchor(features, intrinsics, cam_to_ego)[:, None, None]

        S = self.config.bev_size
        bev_map = bev.transpose(1, 2).reshape(B, -1, S, S)                     # rows=y, cols=x
        risk = self.risk_head(bev_map)

        tokens = [self.ego_queries.expand(B, -1, -1),
                  self.intent_embed(intent)[:, None, :],
                  self.past_embed(past_states.flatten(1))[:, None, :]]
        speed = past_states[:, -1, 3]
        base, route_token = None, None
        if self.config.route_points:
            if route is None:  # a caller without a route: the mask is off
                route = past_states.new_zeros((B, self.config.route_points, 2))
                route_valid = past_states.new_zeros((B,))
            valid = route_valid.to(speed.dtype)[:, None]                       # [B, 1]
            route_token = valid * self.route_embed(route.flatten(1) / POSITION_SCALE) \
                + (1.0 - valid) * self.no_route
            tokens.append(route_token[:, None, :])
            base = self.base_path(route, valid, speed)
        ego = torch.cat(tokens, dim=1)
        pos = self.plan_pos.expand(B, -1, -1)
        for block in self.ego_blocks:
            ego = block(ego, pos, bev, bev_pos)
        ctx = ego[:, :self.config.num_ego_queries].mean(dim=1)
        if route_token is not None:
            ctx = ctx + route_token
        waypoints = self.decoder(self.plan_norm(ctx), speed, base)
        return waypoints, risk

    def base_path(self, route, valid, speed):
        """What the waypoints are residuals on: following the route at the current speed where
        the route is valid (the points at arc lengths v*t along it, interpolated in the graph
        with Floor/Gather), else straight ahead at that speed. [B, steps, 2]."""
        R = self.config.route_points
        speed = torch.clamp(speed, min=0.0)
        straight = torch.stack([speed[:, None] * self.plan_times,
                                torch.zeros_like(speed)[:, None] * self.plan_times], dim=-1)
        at = speed[:, None] * self.plan_times / self.config.route_spacing_m   # [B, T] in points
        i0 = torch.clamp(torch.floor(at), 0.0, float(R - 2))
        w = (at - i0)[..., None]                       # > 1 past the last point: extended
        idx = i0.to(torch.int64)[..., None].expand(-1, -1, 2)
        p0, p1 = route.gather(1, idx), route.gather(1, idx + 1)
        along = p0 + w * (p1 - p0)
        v = valid[:, :, None]
        return v * along + (1.0 - v) * straight

    @staticmethod
    def _interface_anchor(features, intrinsics, cam_to_ego):
        """Exactly 0 per sample (for finite inputs) computed *from* the camera inputs, so the
        ego-status-only graph keeps the same five inputs as every other model (ONNX export
        drops unused inputs, and the node feeds all five)."""
        first = [t.flatten(1)[:, 0] for t in (features, intrinsics, cam_to_ego)]
        return (first[0] + first[1] + first[2]) * 0.0

    def forward(self, images, intrinsics, cam_to_ego, past_states, intent, route=None,
                route_valid=None):
        """images [B,N,3,H,W] in [0,1], intrinsics [B,N,3,3] at model input size, cam_to_ego
        [B,N,4,4], past_states [B,16,4] (x, y, yaw, speed; last row = now), intent [B] int64;
        with ``route_points`` > 0 also route [B,R,2] (base_link) and route_valid [B] (0/1).
        Returns waypoints [B,20,2] (base_link, metres) and risk [B,rows,cols] in [0, 1].
        The ego-status-only planner (``use_cameras: false``) never runs the encoder."""
        features = self.encode(images) if self.config.use_cameras else images[:, :, :1, :1, :1]
        return self.plan_from_features(features, intrinsics, cam_to_ego, past_states, intent,
                                       route, route_valid)

    # -- parameters and checkpoints -------------------------------------------------------------
    def trainable_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith('encoder.')}

    def parameter_counts(self) -> dict:
        frozen = sum(p.numel() for p in self.encoder.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {'frozen': frozen, 'trainable': trainable}

    def save_pretrained(self, path) -> None:
        """config.yaml + model.safetensors (trainable weights); the encoder is referenced by path.
        An encoder built from a config has no files of its own, so it is saved under encoder/."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = ModelConfig.from_dict(self.config.to_dict())
        if config.encoder.source == 'config':
            self.encoder.save_pretrained(path / 'encoder')
            config.encoder.source, config.encoder.path = 'pretrained', 'encoder'
        tensors = {k: v.detach().contiguous().cpu()
                   for k, v in self.trainable_state_dict().items()}
        tmp = path / (WEIGHTS_NAME + '.tmp')
        save_file(tensors, str(tmp), metadata={'format': 'pt', 'rsd_drive': 'RiskPlanner'})
        tmp.replace(path / WEIGHTS_NAME)
        config.save_yaml(path / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, path, map_location='cpu') -> 'RiskPlanner':
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f'{path}: not a RiskPlanner checkpoint (no {CONFIG_NAME})')
        model = cls(ModelConfig.from_yaml(path / CONFIG_NAME), base_dir=path)
        model.load_trainable(path / WEIGHTS_NAME, map_location)
        return model.eval()  # as transformers' from_pretrained: inference mode until .train()

    def load_trainable(self, weights_file, map_location='cpu') -> None:
        """Load trainable weights from safetensors; any mismatch is an error naming the tensor."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded = load_file(str(weights_file), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f'{weights_file}: cannot read safetensors weights ({e})') from e
        loaded = rename_legacy_keys(loaded)
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(loaded))
        unexpected = sorted(set(loaded) - set(expected))
        problems = [f'tensor {k!r}: shape {tuple(loaded[k].shape)} in checkpoint, '
                    f'{tuple(expected[k].shape)} expected by the config'
                    for k in expected if k in loaded and loaded[k].shape != expected[k].shape]
        problems += [f'tensor {k!r} missing from checkpoint' for k in missing]
        problems += [f'tensor {k!r} in checkpoint but not in the model' for k in unexpected]
        if problems:
            raise ValueError(f'{weights_file} does not fit the model config:\n  '
                             + '\n  '.join(problems[:20]))
        self.load_state_dict(loaded, strict=False)  # encoder keys are checked separately above

    def describe(self) -> str:
        return json.dumps({'config': self.config.to_dict(), 'parameters': self.parameter_counts()})

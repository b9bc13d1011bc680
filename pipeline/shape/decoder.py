"""Triplanar neural-shape-model decoder, state-dict compatible with the public NSM library.

Why this layout: a published ShapeMedKnee checkpoint must load with ``strict=True`` unchanged, so
the module tree reproduces the public parameter names exactly (our own code, names only):

``vae_decoder.fc.{weight,bias}``
    latent -> ``conv_hidden_dims[0] x d x d`` (``d = conv_deep_image_size``).
``vae_decoder.decoder.<i>.*``
    a Sequential of (ConvTranspose2d k3 s2, LayerNorm or BatchNorm) per hidden width — with NO
    pointwise activation between them (the public stack built one and never used it; every
    released model was trained that way) — and last ``Sequential(Conv2d k3, Tanh)``, giving
    ``3 x sdf_latent_size`` channels: the xz, yz and xy planes in that order.
``vae_decoder.layers.<i>.*``
    released checkpoints carry every plane-generator tensor a second time under this alias; a
    load pre-hook checks the copies agree and drops them.
``sdf_decoder.layers.<i>.{weight_g,weight_v,bias}``
    weight-normalised linear layers ``(sdf_latent_size + 3) -> hidden... -> n_objects``, ReLU
    between them, tanh at the end (``parametrizations.weight.original0/1`` names of the newer
    torch weight-norm API are accepted too).

A query point is divided by ``1 + padding + 1e-5``, clamped to [-1, 1] and sampled bilinearly
(border padding, ``align_corners=True``) on each plane; the three features are summed and
concatenated with ``xyz``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: The coordinate divisor of the public code is ``1 + padding + 10e-6``.
PAD_EPS = 10e-6


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a triplanar decoder (the keys of a public training config)."""

    latent_size: int = 512
    n_objects: int = 2
    conv_hidden_dims: tuple[int, ...] = (512, 512, 512, 512, 512)
    conv_deep_image_size: int = 2
    conv_norm: bool = True
    conv_norm_type: str = "layer"
    conv_start_with_mlp: bool = True
    sdf_latent_size: int = 128
    sdf_hidden_dims: tuple[int, ...] = (512, 512, 512)
    weight_norm: bool = True
    activation: str = "relu"
    final_activation: str = "tanh"
    sum_conv_output_features: bool = True
    conv_pred_sdf: bool = False
    padding: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def plane_size(self) -> int:
        """Side length of each feature plane (pixels)."""
        return self.conv_deep_image_size * 2 ** len(self.conv_hidden_dims)

    @classmethod
    def from_training_config(cls, cfg: dict[str, Any]) -> DecoderConfig:
        """Map a public ``model_params_config.json`` onto the decoder architecture.

        Raises ``ValueError`` for settings that change the architecture in ways no released
        checkpoint uses (a conv activation, a non-triplanar model type).
        """
        if cfg.get("model_type", "triplanar") != "triplanar":
            raise ValueError(f"model_type {cfg.get('model_type')!r} is not supported (triplanar only)")
        if cfg.get("conv_activation") not in (None, "none", "null"):
            raise ValueError("conv_activation other than null changes the state-dict layout; "
                             "no released model uses it")
        if "latent_size" not in cfg:
            raise ValueError("config has no latent_size")
        return cls(
            latent_size=int(cfg["latent_size"]),
            n_objects=int(cfg.get("objects_per_decoder", 1)),
            conv_hidden_dims=tuple(int(v) for v in cfg.get("conv_hidden_dims", [512] * 5)),
            conv_deep_image_size=int(cfg.get("conv_deep_image_size", 2)),
            conv_norm=bool(cfg.get("conv_norm", True)),
            conv_norm_type=str(cfg.get("conv_norm_type", "layer")),
            conv_start_with_mlp=bool(cfg.get("conv_start_with_mlp", True)),
            sdf_latent_size=int(cfg.get("sdf_latent_size", 128)),
            sdf_hidden_dims=tuple(int(v) for v in cfg.get("sdf_hidden_dims", [512, 512, 512])),
            weight_norm=bool(cfg.get("weight_norm", True)),
            activation=str(cfg.get("activation", "relu")),
            final_activation=str(cfg.get("final_activation", "tanh")),
            sum_conv_output_features=bool(cfg.get("sum_conv_output_features", True)),
            conv_pred_sdf=bool(cfg.get("conv_pred_sdf", False)),
            padding=float(cfg.get("padding", 0.1)),
        )


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU,
                "elu": nn.ELU, "softplus": nn.Softplus, "swish": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name == "linear":
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}")
    return _ACTIVATIONS[name]()


class WeightNormLinear(nn.Module):
    """``y = x @ (g * v / ||v||).T + b`` with parameters named like torch's legacy weight norm."""

    def __init__(self, n_in: int, n_out: int, weight_norm: bool = True) -> None:
        super().__init__()
        lin = nn.Linear(n_in, n_out)
        self.bias = nn.Parameter(lin.bias.detach().clone())
        self.use_norm = weight_norm
        if weight_norm:
            w = lin.weight.detach().clone()
            self.weight_v = nn.Parameter(w)
            self.weight_g = nn.Parameter(w.norm(dim=1, keepdim=True))
        else:
            self.weight = nn.Parameter(lin.weight.detach().clone())
        self._register_load_state_dict_pre_hook(self._accept_parametrized_names)

    @staticmethod
    def _accept_parametrized_names(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Rename ``parametrizations.weight.original0/1`` (new torch API) to ``weight_g/_v``."""
        for old, new in (("original0", "weight_g"), ("original1", "weight_v")):
            key = f"{prefix}parametrizations.weight.{old}"
            if key in state_dict:
                state_dict[prefix + new] = state_dict.pop(key)

    def effective_weight(self) -> torch.Tensor:
        """The weight matrix actually applied (``g * v / ||v||`` row-wise)."""
        if not self.use_norm:
            return self.weight
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class PlaneGenerator(nn.Module):
    """Latent -> ``(B, 3 * sdf_latent_size, H, W)`` feature planes (public name ``vae_decoder``)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.conv_deep_image_size
        dims = list(cfg.conv_hidden_dims)
        if cfg.latent_size % (d * d):
            raise ValueError("latent_size must be divisible by conv_deep_image_size**2")
        self.cfg = cfg
        if cfg.conv_start_with_mlp:
            self.fc = nn.Linear(cfg.latent_size, dims[0] * d * d)
            channels = dims[0]
        else:
            channels = cfg.latent_size // (d * d)
        layers: list[nn.Module] = []
        size = d
        for width in dims:
            layers.append(nn.ConvTranspose2d(channels, width, 3, stride=2, padding=1, output_padding=1))
            size *= 2
            if cfg.conv_norm:
                if cfg.conv_norm_type == "layer":
                    layers.append(nn.LayerNorm([width, size, size]))
                elif cfg.conv_norm_type == "batch":
                    layers.append(nn.BatchNorm2d(width))
                else:
                    raise ValueError("conv_norm_type must be 'layer' or 'batch'")
            channels = width
        out = cfg.sdf_latent_size * (3 if cfg.sum_conv_output_features else 1) + 3 * cfg.conv_pred_sdf
        layers.append(nn.Sequential(nn.Conv2d(channels, out, 3, padding=1), nn.Tanh()))
        self.decoder = nn.Sequential(*layers)
        self._register_load_state_dict_pre_hook(self._drop_aliases)

    @staticmethod
    def _drop_aliases(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Remove the duplicated ``layers.*`` copies of released checkpoints after checking them."""
        for key in [k for k in state_dict if k.startswith(prefix + "layers.")]:
            twin = prefix + "decoder." + key[len(prefix) + len("layers."):]
            value = state_dict.pop(key)
            if twin not in state_dict:
                state_dict[twin] = value
            elif not torch.equal(state_dict[twin], value):
                raise ValueError(f"checkpoint alias {key} differs from {twin}")

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        d = cfg.conv_deep_image_size
        x = latent.reshape(-1, cfg.latent_size)
        if cfg.conv_start_with_mlp:
            x = self.fc(x).view(-1, cfg.conv_hidden_dims[0], d, d)
        else:
            x = x.view(-1, cfg.latent_size // (d * d), d, d)
        return self.decoder(x)


class SdfMlp(nn.Module):
    """Per-point MLP ``(features, xyz) -> SDF per object`` (public name ``sdf_decoder``)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        dims = [cfg.sdf_latent_size + 3, *cfg.sdf_hidden_dims, cfg.n_objects]
        self.layers = nn.ModuleList(
            WeightNormLinear(a, b, cfg.weight_norm) for a, b in itertools.pairwise(dims)
        )
        self.activation = _activation(cfg.activation)
        self.final_activation = _activation(cfg.final_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.activation(x)
        return self.final_activation(x)


class TriplanarDecoder(nn.Module):
    """The whole decoder: ``planes(latent)`` once per latent, then ``sdf(planes, xyz)`` per point.

    Splitting the two halves is what makes latent fitting cheap: the convolutional plane generator
    runs once per iteration, the per-point work is three bilinear lookups and a small MLP.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        if not cfg.sum_conv_output_features:
            raise ValueError("sum_conv_output_features=false is not supported")
        self.cfg = cfg
        self.vae_decoder = PlaneGenerator(cfg)
        self.sdf_decoder = SdfMlp(cfg)

    def planes(self, latent: torch.Tensor) -> torch.Tensor:
        """``(L,)`` or ``(B, L)`` latents -> ``(B, 3C, H, W)`` planes."""
        return self.vae_decoder(latent)

    def plane_grids(self, xyz: torch.Tensor) -> torch.Tensor:
        """``(B, N, 3)`` points -> ``(3B, N, 1, 2)`` sampling grids for the xz, yz, xy planes."""
        q = (xyz / (1.0 + self.cfg.padding + PAD_EPS)).clamp(-1.0, 1.0)
        b, n, _ = q.shape
        pairs = torch.stack([q[..., [0, 2]], q[..., [1, 2]], q[..., [0, 1]]], dim=1)  # (B,3,N,2)
        return pairs.reshape(b * 3, n, 1, 2)

    def sample_features(self, planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Summed plane features ``(B, N, C)`` — one ``grid_sample`` call for all planes."""
        b, c3, h, w = planes.shape
        c = c3 // 3
        grid = self.plane_grids(xyz)
        stacked = planes.reshape(b * 3, c, h, w)
        feats = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border",
                              align_corners=True)  # (3B, C, N, 1)
        return feats.reshape(b, 3, c, -1).sum(dim=1).transpose(1, 2)

    def sdf(self, planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """SDF ``(B, N, n_objects)`` of points ``(B, N, 3)`` (or ``(N, 3)`` with B = 1)."""
        squeeze = xyz.dim() == 2
        if squeeze:
            xyz = xyz.unsqueeze(0)
        feats = self.sample_features(planes, xyz)
        out = self.sdf_decoder(torch.cat([feats, xyz], dim=-1))
        return out[0] if squeeze else out

    def forward(self, latent: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """SDF of ``xyz`` for ``latent`` (shapes as in :meth:`sdf`)."""
        return self.sdf(self.planes(latent), xyz)


def sample_features_per_plane(decoder: TriplanarDecoder, planes: torch.Tensor,
                              xyz: torch.Tensor) -> torch.Tensor:
    """Reference implementation: one ``grid_sample`` per plane (B = 1), like the public code.

    Kept for the benchmark's plain path and for the test that the vectorised sampler agrees.
    """
    c = planes.shape[1] // 3
    q = (xyz / (1.0 + decoder.cfg.padding + PAD_EPS)).clamp(-1.0, 1.0)
    total = None
    for k, cols in enumerate(([0, 2], [1, 2], [0, 1])):
        grid = q[:, cols][None, :, None, :]
        f = F.grid_sample(planes[:, k * c:(k + 1) * c], grid, mode="bilinear",
                          padding_mode="border", align_corners=True)[0, :, :, 0].T
        total = f if total is None else total + f
    return total  # type: ignore[return-value]


def build_decoder(cfg: DecoderConfig | dict[str, Any]) -> TriplanarDecoder:
    """A decoder with random weights for ``cfg`` (a :class:`DecoderConfig` or a training config)."""
    if isinstance(cfg, dict):
        cfg = DecoderConfig.from_training_config(cfg)
    return TriplanarDecoder(cfg)


def public_state_dict(decoder: TriplanarDecoder, with_aliases: bool = True) -> dict[str, torch.Tensor]:
    """The decoder's state dict as the public library saves it (``layers.*`` aliases included).

    Used to write our demo models in the released format and by the compatibility test.
    """
    sd = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
    if with_aliases:
        for k in [k for k in sd if k.startswith("vae_decoder.decoder.")]:
            sd["vae_decoder.layers." + k[len("vae_decoder.decoder."):]] = sd[k].clone()
    return sd


def count_parameters(decoder: nn.Module) -> int:
    """Number of distinct parameters (the aliases are not parameters)."""
    return sum(p.numel() for p in decoder.parameters())


def config_dict(cfg: DecoderConfig) -> dict[str, Any]:
    """The training-config keys that describe ``cfg`` (what our demo folders write)."""
    return {
        "model_type": "triplanar", "latent_size": cfg.latent_size,
        "objects_per_decoder": cfg.n_objects, "conv_hidden_dims": list(cfg.conv_hidden_dims),
        "conv_deep_image_size": cfg.conv_deep_image_size, "conv_norm": cfg.conv_norm,
        "conv_norm_type": cfg.conv_norm_type, "conv_start_with_mlp": cfg.conv_start_with_mlp,
        "conv_activation": None, "sdf_latent_size": cfg.sdf_latent_size,
        "sdf_hidden_dims": list(cfg.sdf_hidden_dims), "weight_norm": cfg.weight_norm,
        "activation": cfg.activation, "final_activation": cfg.final_activation,
        "sum_conv_output_features": cfg.sum_conv_output_features,
        "conv_pred_sdf": cfg.conv_pred_sdf, "padding": cfg.padding,
    }


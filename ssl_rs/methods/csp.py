"""CSP (Mai et al., ICML 2023): contrastive spatial pre-training of a dual encoder, an image
encoder (the backbone + a linear projection) and a location encoder, so that an image's
embedding matches the embedding of the place it was taken."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import BaseMethod
from .location_encoders import (
    POSITION_ENCODINGS,
    LocationEncoder,
    create_position_encoding,
)


def image_location_info_nce(image: Tensor, location: Tensor, temperature: float,
                            extra_locations: Optional[Tensor] = None, gather_distributed: bool = True) -> Tensor:
    """Symmetric in-batch InfoNCE between paired image and location embeddings.

    With cosine logits ``s_ij = <img_i, loc_j> / (|img_i| |loc_j| temperature)`` the loss is
    ``(CE(s, I) + CE(s^T, I)) / 2``: each image must pick its own place among the batch's places,
    and each place its own image. ``extra_locations`` (embeddings of random places) are further
    negatives for the image -> location direction only. Under DDP (``gather_distributed``) the
    batch is the global one: each process scores its own rows against the embeddings of every
    process (lightly's differentiable ``gather``), so the mean of the processes' losses equals
    the single-process loss on the whole batch (equal per-process batches, as ``drop_last`` gives).
    """
    from lightly.utils import dist

    img = F.normalize(image.float(), dim=-1)
    loc = F.normalize(location.float(), dim=-1)
    all_img, all_loc, offset = img, loc, 0
    if gather_distributed and dist.world_size() > 1:
        all_img, all_loc = torch.cat(dist.gather(img)), torch.cat(dist.gather(loc))
        offset = dist.rank() * img.shape[0]
    labels = torch.arange(img.shape[0], device=img.device) + offset
    image_to_location = img @ all_loc.T / temperature
    location_to_image = loc @ all_img.T / temperature
    if extra_locations is not None and extra_locations.numel():
        extra = F.normalize(extra_locations.float(), dim=-1)
        image_to_location = torch.cat([image_to_location, img @ extra.T / temperature], dim=1)
    return 0.5 * (F.cross_entropy(image_to_location, labels) + F.cross_entropy(location_to_image, labels))


def random_sphere_locations(n: int, device=None) -> Tuple[Tensor, Tensor]:
    """``n`` places uniform on the sphere: (lat, lon) in degrees, float64."""
    z = torch.rand(n, device=device, dtype=torch.float64) * 2 - 1
    lon = torch.rand(n, device=device, dtype=torch.float64) * 360 - 180
    return torch.rad2deg(torch.asin(z)), lon


@METHODS.register("csp", summary="CSP: image/location dual encoder, symmetric in-batch InfoNCE")
class CSP(BaseMethod):
    """Contrastive spatial pre-training.

    Image encoder: the registered backbone (pooled features) and a linear projection to
    ``embed_dim``; with ``freeze_image_encoder`` the backbone is kept frozen (CSP's setting with
    pretrained image features) and only the projection learns. Location encoder:
    ``location_encoder`` (``theory``, ``sphereC``, ``sphereC+``, ``sphereM``, ``sphereM+``, ``rff``,
    see :mod:`ssl_rs.methods.location_encoders`) with ``num_scales`` scales between
    ``min_radius`` and ``max_radius`` radians, then an MLP (``loc_hidden_dim`` x
    ``loc_num_layers``, ``loc_dropout``). Loss: :func:`image_location_info_nce` with
    ``temperature``, plus ``random_negatives`` places drawn uniformly on the sphere per step as extra
    negatives. ``z`` (what a regularizer sees) is the projected image embedding. The view is one
    augmented image (``n_views = 1``); the location is the sample's ``lat``/``lon``.
    """

    n_views = 1

    def __init__(self, backbone, *, embed_dim: int = 256, location_encoder: str = "sphereM", num_scales: int = 16,
                 min_radius: float = 1e-3, max_radius: float = 1.0, rff_sigma: float = 0.01,
                 loc_hidden_dim: int = 512, loc_num_layers: int = 2, loc_dropout: float = 0.0,
                 temperature: float = 0.1, random_negatives: int = 0, freeze_image_encoder: bool = False, **kwargs):
        super().__init__(backbone, **kwargs)
        if temperature <= 0:
            raise ConfigError(f"method 'csp': temperature must be > 0, got {temperature}")
        if random_negatives < 0:
            raise ConfigError(f"method 'csp': random_negatives must be >= 0, got {random_negatives}")
        if location_encoder not in POSITION_ENCODINGS:
            raise ConfigError(f"method 'csp': location_encoder must be one of {sorted(POSITION_ENCODINGS)}, "
                              f"got {location_encoder!r}")
        self.image_projection = nn.Linear(backbone.num_features, embed_dim)
        encoding = create_position_encoding(location_encoder, num_scales, min_radius, max_radius, rff_sigma)
        self.location_encoder = LocationEncoder(encoding, embed_dim, loc_hidden_dim, loc_num_layers, loc_dropout)
        self.temperature = temperature
        self.random_negatives = random_negatives
        self.freeze_image_encoder = freeze_image_encoder
        if freeze_image_encoder:
            for p in self.backbone.parameters():
                p.requires_grad = False
        self._embed_dim = embed_dim

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def encode_image(self, images: Tensor) -> Tensor:
        if self.freeze_image_encoder:
            # frozen features: no gradients, and no batch-norm statistics updates or dropout
            # (set here because Lightning switches every submodule to train mode itself)
            self.backbone.eval()
            with torch.no_grad():
                features = self.backbone(images)
            return self.image_projection(features)
        return self.image_projection(self.backbone(images))

    def encode_location(self, lat: Tensor, lon: Tensor) -> Tensor:
        """The pretrained location embedding of places given in degrees."""
        return self.location_encoder(lat, lon)

    def ssl_loss(self, views, batch) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        if "lat" not in batch or "lon" not in batch:
            raise ConfigError("method 'csp' needs lat and lon in every batch (the data file's lat/lon datasets)")
        z = self.encode_image(views[0])
        device = z.device
        loc = self.encode_location(batch["lat"].to(device), batch["lon"].to(device))
        extra = None
        if self.random_negatives:
            extra = self.encode_location(*random_sphere_locations(self.random_negatives, device))
        loss = image_location_info_nce(z, loc, self.temperature, extra)
        with torch.no_grad():
            sim = F.normalize(z.float(), dim=-1) @ F.normalize(loc.float(), dim=-1).T
            top1 = (sim.argmax(dim=1) == torch.arange(len(sim), device=device)).float().mean()
        return loss, z, {"image_to_location_top1": top1}


def load_location_encoder_from_checkpoint(path: str | os.PathLike) -> LocationEncoder:
    """Rebuild the pretrained location encoder of a CSP training checkpoint (eval mode)."""
    from ..train import CHECKPOINT_CONFIG_KEY

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt.get(CHECKPOINT_CONFIG_KEY) if isinstance(ckpt, dict) else None
    if not cfg or cfg.get("method", {}).get("name") != "csp":
        raise ConfigError(f"{path}: method: not a CSP training checkpoint")
    args = dict(cfg["method"].get("args") or {})
    defaults = CSP.__init__.__kwdefaults__
    get = lambda key: args.get(key, defaults[key])
    encoding = create_position_encoding(get("location_encoder"), get("num_scales"), get("min_radius"),
                                        get("max_radius"), get("rff_sigma"))
    encoder = LocationEncoder(encoding, get("embed_dim"), get("loc_hidden_dim"), get("loc_num_layers"),
                              get("loc_dropout"))
    prefix = "location_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return encoder.eval()

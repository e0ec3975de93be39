"""CSP (Mai et al., ICML 2023): contrastive spatial pre-training of a dual encoder, an image
encoder (the backbone + a linear projection) and a location encoder, so that an image's
embedding matches the embedding of the place it was taken."""

from __future__ import annotations

import math
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import BaseMethod
from .losses import image_location_info_nce
from .recipe import OptimRecipe
from .location_encoders import (
    ACTIVATIONS,
    MLP_STYLES,
    POSITION_ENCODINGS,
    LocationEncoder,
    create_position_encoding,
)

OBJECTIVES = ("infonce", "contsoftmax")
RANDOM_LOCATION_SAMPLERS = ("sphere", "sphericalold")


def image_location_contsoftmax(image: Tensor, location: Tensor, temperature: float,
                               random_locations: Optional[Tensor] = None, random_temperature: float = 1.0,
                               random_weight: float = 1.0, location_again: Optional[Tensor] = None,
                               simcse_temperature: float = 1.0, simcse_weight: float = 0.0, symmetric: bool = False,
                               gather_distributed: bool = True) -> Tuple[Tensor, Dict[str, Tensor]]:
    """CSP's ``contsoftmax`` objective (``contsoftmaxsym`` with ``symmetric``): three softmax
    cross-entropies on cosine similarities, each with its own temperature.

    * in-batch: ``CE(loc_i . img_j / temperature, i)`` (each place picks its image among the
      batch's images); ``symmetric`` adds (sums, not averages) the image -> place direction;
    * random locations: ``random_locations`` (K, B, D), K random places per sample; sample ``b``
      scores ``[loc_b . img_b, r_1b . img_b, ..., r_Kb . img_b] / random_temperature`` and must pick
      its own place (index 0). Weighted by ``random_weight``;
    * SimCSE: ``location_again``, a second pass of the same places through the location encoder
      (other dropout masks): ``CE(loc_i . loc'_j / simcse_temperature, i)``, weighted by
      ``simcse_weight``.

    Returns the total and the detached terms. Under DDP (``gather_distributed``) the in-batch and
    SimCSE candidates are the global batch's (each process's rows against every process's
    columns); the random-location term is per sample and needs nothing gathered.
    """
    from lightly.utils import dist

    img = F.normalize(image.float(), dim=-1)
    loc = F.normalize(location.float(), dim=-1)
    loc2 = F.normalize(location_again.float(), dim=-1) if location_again is not None else None
    all_img, all_loc, all_loc2, offset = img, loc, loc2, 0
    if gather_distributed and dist.world_size() > 1:
        all_img, all_loc = torch.cat(dist.gather(img)), torch.cat(dist.gather(loc))
        if loc2 is not None:
            all_loc2 = torch.cat(dist.gather(loc2))
        offset = dist.rank() * img.shape[0]
    labels = torch.arange(img.shape[0], device=img.device) + offset
    inbatch = F.cross_entropy(loc @ all_img.T / temperature, labels)
    if symmetric:
        inbatch = inbatch + F.cross_entropy(img @ all_loc.T / temperature, labels)
    loss, terms = inbatch, {"inbatch_loss": inbatch.detach()}
    if random_locations is not None and random_locations.numel():
        rand = F.normalize(random_locations.float(), dim=-1)
        positive = (loc * img).sum(dim=-1, keepdim=True)
        negatives = torch.einsum("kbd,bd->bk", rand, img)
        logits = torch.cat([positive, negatives], dim=1) / random_temperature
        random_term = F.cross_entropy(logits, torch.zeros(len(img), dtype=torch.long, device=img.device))
        loss = loss + random_weight * random_term
        terms["random_location_loss"] = random_term.detach()
    if loc2 is not None:
        simcse = F.cross_entropy(loc @ all_loc2.T / simcse_temperature, labels)
        loss = loss + simcse_weight * simcse
        terms["simcse_loss"] = simcse.detach()
    return loss, terms


def random_sphere_locations(n: int, device=None) -> Tuple[Tensor, Tensor]:
    """``n`` places uniform on the sphere: (lat, lon) in degrees, float64."""
    z = torch.rand(n, device=device, dtype=torch.float64) * 2 - 1
    lon = torch.rand(n, device=device, dtype=torch.float64) * 360 - 180
    return torch.rad2deg(torch.asin(z)), lon


def random_sphericalold_locations(n: int, device=None) -> Tuple[Tensor, Tensor]:
    """CSP's ``neg_rand_type: sphericalold`` draw (the one its scripts use): (x, y) of a point
    uniform on the unit sphere, read as ``lon = 180 x``, ``lat = 90 y`` (degrees). Not uniform
    on the sphere: the places fill the ellipse ``(lon / 180)^2 + (lat / 90)^2 <= 1``, denser
    towards its rim. Drawn like the reference (``torch.rand(n, 3)`` on the CPU generator, float32,
    the third column unused); returned as (lat, lon) float64 on ``device``."""
    u = torch.rand(n, 3) * 2 - 1
    theta = (u[:, 1] + 1) / 2.0 * (2 * math.pi)
    radius = torch.sqrt(1.0 - u[:, 0] ** 2)
    lon = radius * torch.cos(theta) * 180
    lat = radius * torch.sin(theta) * 90
    return lat.to(device=device, dtype=torch.float64), lon.to(device=device, dtype=torch.float64)


def random_locations(n: int, sampler: str = "sphere", device=None) -> Tuple[Tensor, Tensor]:
    """``n`` random places, (lat, lon) in degrees: ``sphere`` (uniform on the sphere) or
    ``sphericalold`` (CSP's draw, :func:`random_sphericalold_locations`)."""
    if sampler == "sphere":
        return random_sphere_locations(n, device)
    if sampler == "sphericalold":
        return random_sphericalold_locations(n, device)
    raise ConfigError(f"random location sampler must be one of {list(RANDOM_LOCATION_SAMPLERS)}, got {sampler!r}")


@METHODS.register("csp", summary="CSP: image/location dual encoder, symmetric in-batch InfoNCE "
                                  "(or the authors' contsoftmax)")
class CSP(BaseMethod):
    """Contrastive spatial pre-training.

    Image encoder: the registered backbone (pooled features) and a linear projection to
    ``embed_dim``; with ``freeze_image_encoder`` the backbone is kept frozen (CSP's setting with
    pretrained image features) and only the projection learns. Location encoder:
    ``location_encoder`` (``grid``, ``theory``, ``sphereC``, ``sphereC+``, ``sphereM``, ``sphereM+``,
    ``rff``, see :mod:`ssl_rs.methods.location_encoders`) with ``num_scales`` scales between
    ``min_radius`` and ``max_radius`` radians, then an MLP (``loc_hidden_dim`` x
    ``loc_num_layers``, ``loc_dropout``, ``loc_activation``; ``loc_mlp: space2vec`` is the
    authors' layer layout, see :class:`LocationEncoder`).

    ``objective: infonce`` (default): :func:`image_location_info_nce` with ``temperature``, plus
    ``random_negatives`` random places per step (shared by the batch) as extra negatives of the
    image -> location softmax. ``objective: contsoftmax`` (the authors' loss):
    :func:`image_location_contsoftmax` with ``temperature`` for the in-batch term
    (``contsoftmax_symmetric`` for their ``contsoftmaxsym``), ``random_locations_per_image``
    random places per sample in a separate term (``random_location_temperature``,
    ``random_location_weight``), and with ``simcse_weight`` > 0 a SimCSE term between two
    dropout passes of the location encoder (``simcse_temperature``). Random places come from
    ``random_location_sampler`` (``sphere``, or the authors' ``sphericalold``).
    ``z`` (what a regularizer sees) is the projected image embedding. The view is one augmented
    image (``n_views = 1``); the location is the sample's ``lat``/``lon``.
    """

    n_views = 1
    batch_keys = frozenset({"lat", "lon"})
    # the authors' (gengchenmai/csp): Adam lr 5e-4 (iNat2018), no weight decay, constant lr
    recipe = OptimRecipe(name="adamw", lr=5e-4, lr_scaling="none", weight_decay=0.0, schedule="constant")
    geo_embeddings = ("image",)

    def __init__(self, backbone, *, embed_dim: int = 256, location_encoder: str = "sphereM", num_scales: int = 16,
                 min_radius: float = 1e-3, max_radius: float = 1.0, rff_sigma: float = 0.01,
                 loc_hidden_dim: int = 512, loc_num_layers: int = 2, loc_dropout: float = 0.0,
                 loc_activation: str = "relu", loc_mlp: str = "plain",
                 objective: str = "infonce", temperature: float = 0.1, random_negatives: int = 0,
                 contsoftmax_symmetric: bool = False, random_locations_per_image: int = 1,
                 random_location_temperature: float = 1.0, random_location_weight: float = 1.0,
                 simcse_weight: float = 0.0, simcse_temperature: float = 1.0,
                 random_location_sampler: str = "sphere", freeze_image_encoder: bool = False, **kwargs):
        super().__init__(backbone, **kwargs)
        if objective not in OBJECTIVES:
            raise ConfigError(f"method 'csp': objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        for name, value in (("temperature", temperature), ("random_location_temperature", random_location_temperature),
                            ("simcse_temperature", simcse_temperature)):
            if value <= 0:
                raise ConfigError(f"method 'csp': {name} must be > 0, got {value}")
        for name, value in (("random_negatives", random_negatives),
                            ("random_locations_per_image", random_locations_per_image),
                            ("random_location_weight", random_location_weight), ("simcse_weight", simcse_weight)):
            if value < 0:
                raise ConfigError(f"method 'csp': {name} must be >= 0, got {value}")
        if objective == "contsoftmax" and random_negatives:
            raise ConfigError("method 'csp': random_negatives belongs to objective 'infonce'; objective "
                              "'contsoftmax' draws random_locations_per_image places per sample instead")
        if objective == "infonce" and (simcse_weight or contsoftmax_symmetric):
            raise ConfigError("method 'csp': simcse_weight and contsoftmax_symmetric need objective 'contsoftmax'")
        if random_location_sampler not in RANDOM_LOCATION_SAMPLERS:
            raise ConfigError(f"method 'csp': random_location_sampler must be one of "
                              f"{list(RANDOM_LOCATION_SAMPLERS)}, got {random_location_sampler!r}")
        if location_encoder not in POSITION_ENCODINGS:
            raise ConfigError(f"method 'csp': location_encoder must be one of {sorted(POSITION_ENCODINGS)}, "
                              f"got {location_encoder!r}")
        if loc_activation not in ACTIVATIONS:
            raise ConfigError(f"method 'csp': loc_activation must be one of {sorted(ACTIVATIONS)}, "
                              f"got {loc_activation!r}")
        if loc_mlp not in MLP_STYLES:
            raise ConfigError(f"method 'csp': loc_mlp must be one of {list(MLP_STYLES)}, got {loc_mlp!r}")
        self.image_projection = nn.Linear(backbone.num_features, embed_dim)
        encoding = create_position_encoding(location_encoder, num_scales, min_radius, max_radius, rff_sigma)
        self.location_encoder = LocationEncoder(encoding, embed_dim, loc_hidden_dim, loc_num_layers, loc_dropout,
                                                loc_activation, loc_mlp)
        self.objective = objective
        self.temperature = temperature
        self.random_negatives = random_negatives
        self.contsoftmax_symmetric = contsoftmax_symmetric
        self.random_locations_per_image = random_locations_per_image
        self.random_location_temperature = random_location_temperature
        self.random_location_weight = random_location_weight
        self.simcse_weight = simcse_weight
        self.simcse_temperature = simcse_temperature
        self.random_location_sampler = random_location_sampler
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
        z = self.encode_image(views[0])
        device = z.device
        lat, lon = batch["lat"].to(device), batch["lon"].to(device)
        loc = self.encode_location(lat, lon)
        logs: Dict[str, Tensor] = {}
        if self.objective == "infonce":
            extra = None
            if self.random_negatives:
                extra = self.encode_location(*random_locations(self.random_negatives, self.random_location_sampler,
                                                               device))
            loss = image_location_info_nce(z, loc, self.temperature, extra)
        else:
            rand = again = None
            if self.random_locations_per_image:
                k, b = self.random_locations_per_image, z.shape[0]
                # row k * B + b is the k-th random place of sample b (the authors' layout)
                rand = self.encode_location(*random_locations(k * b, self.random_location_sampler, device))
                rand = rand.reshape(k, b, -1)
            if self.simcse_weight:
                again = self.encode_location(lat, lon)  # other dropout masks
            loss, logs = image_location_contsoftmax(
                z, loc, self.temperature, rand, self.random_location_temperature, self.random_location_weight,
                again, self.simcse_temperature, self.simcse_weight, self.contsoftmax_symmetric)
        with torch.no_grad():
            sim = F.normalize(z.float(), dim=-1) @ F.normalize(loc.float(), dim=-1).T
            top1 = (sim.argmax(dim=1) == torch.arange(len(sim), device=device)).float().mean()
        return loss, z, {"image_to_location_top1": top1, **logs}


def load_location_encoder_from_checkpoint(path: str | os.PathLike) -> LocationEncoder:
    """Rebuild the pretrained location encoder of a CSP training checkpoint (eval mode)."""
    from ..checkpoint import read_training_checkpoint

    ckpt = read_training_checkpoint(path)
    if ckpt.method != "csp":
        raise ConfigError(f"{path}: method: not a CSP training checkpoint")
    args = ckpt.method_args
    defaults = CSP.__init__.__kwdefaults__
    get = lambda key: args.get(key, defaults[key])
    encoding = create_position_encoding(get("location_encoder"), get("num_scales"), get("min_radius"),
                                        get("max_radius"), get("rff_sigma"))
    encoder = LocationEncoder(encoding, get("embed_dim"), get("loc_hidden_dim"), get("loc_num_layers"),
                              get("loc_dropout"), get("loc_activation"), get("loc_mlp"))
    prefix = "location_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix)})
    return encoder.eval()

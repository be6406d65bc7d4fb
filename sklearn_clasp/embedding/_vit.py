"""The DINOv2 vision transformer, written to load the official checkpoints.

A self-contained re-implementation of ``dinov2/models/vision_transformer.py``
from the official repository (facebookresearch/dinov2, the version with
register tokens), reduced to inference. Parameter names and shapes are the
official ones with ``block_chunks=0`` (``blocks.N.*``), so the released
``*_pretrain.pth`` files load with ``strict=True``:

===========================  ======================================
key                          shape
===========================  ======================================
``cls_token``                ``(1, 1, D)``
``pos_embed``                ``(1, 1 + 37 * 37, D)`` (``img_size=518``)
``register_tokens``          ``(1, 4, D)``, ``*_reg`` models only
``mask_token``               ``(1, D)`` (training only, kept for loading)
``patch_embed.proj.*``       ``Conv2d(3, D, 14, stride=14)``
``blocks.N.norm1/norm2.*``   ``LayerNorm(D, eps=1e-6)``
``blocks.N.attn.qkv.*``      ``Linear(D, 3 D)``
``blocks.N.attn.proj.*``     ``Linear(D, D)``
``blocks.N.ls1/ls2.gamma``   ``(D,)`` layer scale
``blocks.N.mlp.fc1/fc2.*``   GELU MLP, hidden ``4 D``
``blocks.N.mlp.w12/w3.*``    SwiGLU (giant), hidden ``(int(8 D / 3) + 7) // 8 * 8``
``norm.*``                   final ``LayerNorm(D, eps=1e-6)``
===========================  ======================================

Token order is ``[cls, registers..., patches...]``. The positional embedding is
added to the class and patch tokens *before* the registers are inserted, so the
registers carry none. For an input grid other than the 37 x 37 the embedding
was trained at, the patch part of the embedding is resized with bicubic
interpolation exactly as the official code does it: the original models use a
scale factor with a 0.1 offset and no antialiasing, the ``*_reg`` models an
explicit output size with antialiasing.

No torchvision, timm or xFormers; attention uses
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DinoVisionTransformer",
    "DinoConfig",
    "MODEL_CONFIGS",
    "build_dinov2",
]


@dataclass(frozen=True)
class DinoConfig:
    """Architecture of one official DINOv2 backbone (mirrors ``hub/backbones.py``)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn_layer: str = "mlp"
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    patch_size: int = 14
    img_size: int = 518
    mlp_ratio: float = 4.0
    init_values: float = 1.0


_ARCHS = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglufused"),
}
# The *_reg hub entries: 4 registers, antialiased interpolation, no offset.
_REG = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)

#: Architecture of every official backbone, by torch hub entry name.
MODEL_CONFIGS = {}
for _arch, _kw in _ARCHS.items():
    MODEL_CONFIGS[f"dinov2_{_arch}"] = DinoConfig(**_kw)
    MODEL_CONFIGS[f"dinov2_{_arch}_reg"] = DinoConfig(**_kw, **_REG)
del _arch, _kw


class LayerScale(nn.Module):
    """Per-channel scaling of a residual branch (parameter ``gamma``)."""

    def __init__(self, dim, init_values=1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x):
        return x * self.gamma


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection, ``(B, 3, H, W) -> (B, H/p * W/p, D)``."""

    def __init__(self, patch_size, embed_dim, in_chans=3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def keys(self, x):
        """The attention keys, heads concatenated: ``(B, N, D)``."""
        dim = x.shape[-1]
        return F.linear(x, self.qkv.weight[dim : 2 * dim], self.qkv.bias[dim : 2 * dim])

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """Two-layer GELU MLP (``fc1``, ``fc2``)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward (``w12``, ``w3``) as in the official giant model."""

    def __init__(self, dim, hidden):
        super().__init__()
        # Same hidden size as the official SwiGLUFFNFused.
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    """Pre-norm transformer block with layer scale."""

    def __init__(self, dim, num_heads, mlp_ratio, ffn_layer, init_values):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        if ffn_layer == "mlp":
            self.mlp = Mlp(dim, hidden)
        elif ffn_layer in ("swiglu", "swiglufused"):
            self.mlp = SwiGLUFFN(dim, hidden)
        else:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; use 'mlp' or 'swiglufused'")
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT backbone for inference, official parameter layout.

    Parameters
    ----------
    config : DinoConfig
        The architecture; see :data:`MODEL_CONFIGS`.

    Attributes
    ----------
    embed_dim : int
        Feature dimension ``D``.
    patch_size : int
        Patch side in pixels (14).
    num_register_tokens : int
        Number of register tokens (0 or 4).
    n_blocks : int
        Number of transformer blocks.

    Examples
    --------
    >>> import torch
    >>> from sklearn_clasp.embedding._vit import build_dinov2
    >>> model = build_dinov2("dinov2_vits14_reg").eval()
    >>> with torch.inference_mode():
    ...     out = model.patch_features(torch.zeros(1, 3, 56, 70))
    >>> tuple(out.shape)
    (1, 4, 5, 384)
    """

    def __init__(self, config: DinoConfig):
        super().__init__()
        c = config
        self.config = c
        self.embed_dim = c.embed_dim
        self.patch_size = c.patch_size
        self.num_register_tokens = c.num_register_tokens
        self.n_blocks = c.depth
        self.interpolate_antialias = c.interpolate_antialias
        self.interpolate_offset = c.interpolate_offset

        self.patch_embed = PatchEmbed(c.patch_size, c.embed_dim)
        n_patches = (c.img_size // c.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, c.embed_dim))
        if c.num_register_tokens:
            self.register_tokens = nn.Parameter(
                torch.zeros(1, c.num_register_tokens, c.embed_dim)
            )
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.ffn_layer, c.init_values)
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, c.embed_dim))

    def init_random(self, generator=None):
        """Fill every parameter with random values (for tests and smoke runs).

        Linear and convolution weights get a truncated normal (std 0.02) as in
        the official initialisation; biases, norms, tokens and the position
        embedding get small random values so that no part of the computation
        is trivially zero or one.
        """
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("gamma"):
                    p.uniform_(0.5, 1.5, generator=generator)
                elif "norm" in name and name.endswith("weight"):
                    p.normal_(1.0, 0.1, generator=generator)
                elif p.ndim >= 2 and name.endswith("weight"):
                    p.normal_(0.0, 0.02, generator=generator).clamp_(-0.04, 0.04)
                else:
                    p.normal_(0.0, 0.02, generator=generator)
        return self

    def interpolate_pos_encoding(self, x, h, w):
        """Position embedding for ``x`` (class token + patches) of an ``h x w`` pixel input.

        Exactly the official ``interpolate_pos_encoding`` (``w`` there is our
        height: the official code names the input sides ``w, h`` in tensor
        order).
        """
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and h == w:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        h0 = h // self.patch_size
        w0 = w // self.patch_size
        M = int(math.sqrt(N))
        if N != M * M:
            raise ValueError(f"pos_embed holds {N} patch positions, not a square grid")
        kwargs = {}
        if self.interpolate_offset:
            # Historical kludge kept for backward compatibility (dino issue #8):
            # the result depends on the scale factor, not only the output size.
            sx = float(h0 + self.interpolate_offset) / M
            sy = float(w0 + self.interpolate_offset) / M
            kwargs["scale_factor"] = (sx, sy)
        else:
            kwargs["size"] = (h0, w0)
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        if tuple(patch_pos_embed.shape[-2:]) != (h0, w0):
            raise RuntimeError(
                f"position embedding interpolated to {tuple(patch_pos_embed.shape[-2:])}, "
                f"expected {(h0, w0)}"
            )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(
            previous_dtype
        )

    def prepare_tokens(self, x):
        """Images ``(B, 3, H, W)`` to the input token sequence ``[cls, registers, patches]``."""
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the patch size {p}; "
                f"resize the image first"
            )
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, H, W)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x):
        """Official-style output dictionary (``x_norm_patchtokens`` etc.)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
        }

    def forward(self, x):
        """The normalised class token, as the official model's ``forward``."""
        return self.forward_features(x)["x_norm_clstoken"]

    def patch_features(self, x, layer=-1, facet="tokens"):
        """Per-patch features as a grid ``(B, H / 14, W / 14, D)``.

        Parameters
        ----------
        x : Tensor of shape (B, 3, H, W)
            Normalised images, ``H`` and ``W`` multiples of the patch size.
        layer : int, default=-1
            Block to read, ``0 .. n_blocks - 1`` or negative from the end.
            Later blocks are not run.
        facet : {"tokens", "keys"}, default="tokens"
            ``"tokens"``: the block's output tokens passed through the final
            ``norm`` (for the last block these are the official
            ``x_norm_patchtokens``; for others, what the official
            ``get_intermediate_layers(norm=True)`` returns). ``"keys"``: the
            attention keys of that block (heads concatenated), as Deep
            Spectral Methods uses.
        """
        if not -self.n_blocks <= layer < self.n_blocks:
            raise ValueError(
                f"layer={layer} is out of range for a model with {self.n_blocks} blocks; "
                f"use 0..{self.n_blocks - 1} or a negative index"
            )
        if facet not in ("tokens", "keys"):
            raise ValueError(f"facet={facet!r}; use 'tokens' or 'keys'")
        layer = layer % self.n_blocks
        B, _, H, W = x.shape
        x = self.prepare_tokens(x)
        for blk in self.blocks[:layer]:
            x = blk(x)
        blk = self.blocks[layer]
        if facet == "keys":
            out = blk.attn.keys(blk.norm1(x))
        else:
            out = self.norm(blk(x))
        out = out[:, 1 + self.num_register_tokens :]
        return out.reshape(B, H // self.patch_size, W // self.patch_size, -1)


def build_dinov2(name="dinov2_vits14_reg", *, device=None):
    """Build the architecture of an official backbone (parameters zero).

    Parameters
    ----------
    name : str, default="dinov2_vits14_reg"
        One of :data:`MODEL_CONFIGS`.
    device : str or torch.device, default=None
        Where to allocate the parameters; ``"meta"`` allocates nothing (to
        inspect names and shapes).

    Returns
    -------
    model : DinoVisionTransformer
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown DINOv2 model {name!r}; choose one of {sorted(MODEL_CONFIGS)}"
        )
    if device is None:
        return DinoVisionTransformer(MODEL_CONFIGS[name])
    with torch.device(device):
        return DinoVisionTransformer(MODEL_CONFIGS[name])

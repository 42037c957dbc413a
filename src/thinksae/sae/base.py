"""The SAE interface every architecture implements, and the registry of architectures by name.

An architecture is one module with a subclass of :class:`SparseAutoencoder` decorated with
:func:`register`; it shares the parameters (sparsify's names: ``encoder`` Linear, ``W_dec``,
``b_dec``), the decoding and the losses, and supplies only how latents are selected:

  pre(x)          = (x − b_dec) W_encᵀ + b_enc                    (all architectures)
  encode(x)       → (acts, indices) ``[..., width]``: the active latents of each token, padded
                    with zero activations (distinct indices) to the widest token of the call;
                    TopK's width is always k
  decode(a, i)    = Σ_j a_j W_dec[i_j] + b_dec
  forward(x)      → ForwardOutput (reconstruction, selection, FVU, AuxK; per-prefix FVU for
                    Matryoshka)
  pre_acts(x, f)  = pre(x) at latents f only (what the monitor's ``value: pre`` reads)

Files: :mod:`thinksae.sae.formats` (``save_sparsify`` / ``load_sparsify`` and the SAELens layout)
reads and writes every registered architecture; this module does not import it.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ThinksaeError
from .config import SaeConfig
from .kernels import TopKSelection, sparse_decode

AUXK_NORMS = ("x", "residual")
"""What the AuxK squared error is divided by: the variance of the input x, or of the residual e."""

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}
"""Registered architectures by name (the ``architecture`` of :class:`SaeConfig`)."""


class EncoderOutput(NamedTuple):
    """The active latents of each token."""

    latent_acts: Tensor
    """Activations ``[..., width]`` (float32, >= 0; 0 marks padding or a latent that did not
    fire: TopK has width k, threshold architectures the most latents any token of the call has)."""
    latent_indices: Tensor
    """Latent ids ``[..., width]`` (int64), distinct per token, in no particular order."""


class ForwardOutput(NamedTuple):
    """Everything a training step or an evaluation needs from one forward."""

    sae_out: Tensor
    """Reconstruction x̂ ``[B, d_in]``."""
    latent_acts: Tensor
    latent_indices: Tensor
    fvu: Tensor
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over this batch (mean taken over the batch)."""
    auxk_loss: Tensor
    """AuxK loss (0 without dead latents): how well the top dead latents reconstruct the
    residual e = x − x̂, times min(num_dead / k_aux, 1): Σ‖e − ê‖² / Σ‖x − mean(x)‖² with
    ``auxk_norm="x"``, Σ‖e − ê‖² / Σ‖e − mean(e)‖² with ``auxk_norm="residual"``."""
    prefix_fvu: Tensor | None = None
    """Matryoshka: ``[levels]``, the FVU of each nested prefix m_1 < … < m_n (x̂_m decoded from
    the selected latents below m only), normalised like ``fvu``; the last one is ``fvu``. None
    for the architectures without prefixes."""

    @property
    def reconstruction_loss(self) -> Tensor:
        """What training minimises besides AuxK: Σ_levels ``prefix_fvu`` (Matryoshka), else
        ``fvu`` itself (the same tensor)."""
        return self.fvu if self.prefix_fvu is None else self.prefix_fvu.sum()


def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Class decorator: make ``cls`` available under ``cls.architecture``."""
    ARCHITECTURES[cls.architecture] = cls
    return cls


def sae_class(name: str) -> type[SparseAutoencoder]:
    """The registered architecture ``name``, or a one-line error naming the known ones."""
    if name not in ARCHITECTURES:
        raise ThinksaeError(f"unknown SAE architecture {name!r} (known: "
                            f"{', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[name]


def make_sae(d_in: int, cfg: SaeConfig, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.architecture``."""
    return sae_class(cfg.architecture)(d_in, cfg, device=device, dtype=dtype)


def padded_selection(dense: Tensor) -> TopKSelection:
    """The non-zero entries of ``dense [n, latents]`` (>= 0) as ``[n, width]`` activations and
    distinct indices, width = the most non-zeros of any row (at least 1), padded with zeros."""
    width = max(int((dense > 0).sum(-1).max()) if dense.numel() else 1, 1)
    acts, idx = dense.topk(width, dim=-1, sorted=False)
    return TopKSelection(acts.float(), idx)


class SparseAutoencoder(nn.Module):
    """Shared parameters, decoding, losses and training helpers of every architecture."""

    architecture: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    """Whether `thinksae train` can train this architecture."""
    needs_whole_batch: ClassVar[bool] = False
    """Whether its training selection needs the whole batch in one process (no DDP)."""

    def __init__(self, d_in: int, cfg: SaeConfig | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SaeConfig(architecture=self.architecture)
        self.d_in = int(d_in)
        self.num_latents = cfg.latents_for(self.d_in)
        self.check_config(cfg, self.num_latents)
        self.encoder = nn.Linear(self.d_in, self.num_latents, device=device, dtype=dtype)
        self.encoder.bias.data.zero_()
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, device=device, dtype=dtype))
        if cfg.normalize_decoder:
            self.set_decoder_norm_to_unit_norm()

    @classmethod
    def check_config(cls, cfg: SaeConfig, num_latents: int | None = None) -> None:
        """Refuse a config this architecture cannot build (one-line ThinksaeError);
        ``num_latents`` None: the width is not known yet (it depends on the data's d_in)."""
        if cfg.k < 1 or (num_latents is not None and cfg.k > num_latents):
            raise ThinksaeError(f"k must be in 1..{num_latents or 'num_latents'} (got {cfg.k})")
        if cfg.matryoshka_widths:
            raise ThinksaeError(f"--matryoshka_widths is for --architecture matryoshka_batchtopk, "
                                f"not {cls.architecture}")

    @classmethod
    def extra_tensors(cls, num_latents: int) -> dict[str, tuple[int, ...]]:
        """Name → shape of the tensors (buffers) saved beside encoder, W_dec and b_dec."""
        return {}

    @property
    def device(self) -> torch.device:
        return self.encoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.weight.dtype

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        kind = x.device.type
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
        return self.dtype

    # ------------------------------------------------------------------ the interface

    def pre_acts(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``(x − b_dec) W_enc[f]ᵀ + b_enc[f]`` for rows ``x [n, d_in]`` at latents ``features``
        (all when None), float32 ``[n, F]``, computed from those encoder rows only."""
        weight, bias = self.encoder.weight, self.encoder.bias
        if features is not None:
            weight, bias = weight[features], bias[features]
        cd = self._compute_dtype(x)
        centred = x.reshape(-1, self.d_in).float() - self.b_dec.float()
        return torch.addmm(bias.to(cd), centred.to(cd), weight.to(cd).T).float()

    def select(self, x: Tensor, dead_mask: Tensor | None, k_aux: int, train: bool = False
               ) -> tuple[TopKSelection, TopKSelection | None]:
        """The active latents of rows ``x [B, d_in]`` and, given ``dead_mask``, the top ``k_aux``
        dead latents per row for AuxK. ``train``: a training step's selection where it differs
        from inference (BatchTopK)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> EncoderOutput:
        """Active latents of ``x [..., d_in]`` (inference semantics of the architecture)."""
        sel, _ = self.select(x.reshape(-1, self.d_in), None, 0, train=False)
        shape = (*x.shape[:-1], sel.acts.shape[-1])
        return EncoderOutput(sel.acts.reshape(shape), sel.indices.reshape(shape))

    def decode(self, latent_acts: Tensor, latent_indices: Tensor) -> Tensor:
        """Σ_j a_j W_dec[i_j] + b_dec, for ``[..., width]`` activations and indices."""
        k = latent_acts.shape[-1]
        out = sparse_decode(latent_acts.reshape(-1, k), latent_indices.reshape(-1, k), self.W_dec)
        return (out + self.b_dec).reshape(*latent_acts.shape[:-1], self.d_in)

    def dense_acts(self, x: Tensor) -> Tensor:
        """All latent activations ``[..., num_latents]`` (zeros where a latent is not active)."""
        acts, idx = self.encode(x)
        dense = acts.new_zeros((*acts.shape[:-1], self.num_latents))
        return dense.scatter_(-1, idx, acts)

    def aux_selection(self, pre: Tensor, dead_mask: Tensor, k_aux: int) -> TopKSelection:
        """Per row the ``k_aux`` dead latents with the largest pre-activations (ReLU'd)."""
        vals, idx = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, dim=-1, sorted=False)
        return TopKSelection(vals.float().relu(), idx)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None,
                aux_k: int | None = None, auxk_norm: str = "x") -> ForwardOutput:
        """Encode, decode and the losses of a batch ``x [B, d_in]`` (the training selection in
        training mode with gradients on, else the inference one).

        ``dead_mask [num_latents]`` (bool) switches on the AuxK loss: the ``aux_k`` (default
        d_in // 2) dead latents with the largest pre-activations reconstruct the residual
        ``e = x − x̂``; ``auxk_norm`` divides its squared error by the variance of ``x``
        (sparsify) or of ``e`` itself (``"residual"``, Gao et al. 2024).
        """
        if auxk_norm not in AUXK_NORMS:
            raise ThinksaeError(f"unknown auxk_norm {auxk_norm!r} (use {', '.join(AUXK_NORMS)})")
        x = x.reshape(-1, self.d_in)
        num_dead = int(dead_mask.sum()) if dead_mask is not None else 0
        k_aux = min(aux_k or self.d_in // 2, num_dead)
        compute_dtype = self._compute_dtype(x)
        train = self.training and torch.is_grad_enabled()
        sel, aux = self.select(x, dead_mask if num_dead else None, k_aux, train)
        w_dec = self.W_dec.to(compute_dtype)  # the gathers and scatters run in the compute dtype
        sae_out = sparse_decode(sel.acts, sel.indices, w_dec).float() + self.b_dec
        residual = x.float() - sae_out.float()
        total_variance = (x.float() - x.float().mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        if aux is not None:
            scale = min(num_dead / (aux_k or self.d_in // 2), 1.0)
            e_hat = sparse_decode(aux.acts, aux.indices, w_dec).float()
            e = residual.detach()
            norm = total_variance if auxk_norm == "x" else (e - e.mean(0)).pow(2).sum()
            error = (e_hat - e).pow(2).sum()
            auxk_loss = scale * error / norm if norm > 0 else error * 0.0
        else:
            auxk_loss = fvu.new_zeros(())
        return ForwardOutput(sae_out, sel.acts, sel.indices, fvu, auxk_loss)

    # ------------------------------------------------------------------ training helpers

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Scale every decoder row to unit L2 norm."""
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).add_(eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project each decoder row's gradient onto the plane orthogonal to that row."""
        grad = self.W_dec.grad
        if grad is None:
            return
        parallel = torch.linalg.vecdot(grad, self.W_dec, dim=1).unsqueeze(1)
        grad.addcmul_(parallel, self.W_dec, value=-1)

    @torch.no_grad()
    def init_b_dec_from_data(self, x: Tensor, method: str = "mean", iters: int = 50) -> None:
        """Set ``b_dec`` to the mean (or geometric median, Weiszfeld's method) of ``x``."""
        x = x.reshape(-1, self.d_in).float()
        if method == "mean":
            centre = x.mean(0)
        elif method == "geometric_median":
            centre = geometric_median(x, iters)
        else:
            raise ThinksaeError(f"unknown b_dec initialisation {method!r}")
        self.b_dec.copy_(centre.to(self.b_dec.dtype))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale · x`` work on raw ``x``: pre-activations (and so the
        activations and any threshold on them) shrink by ``scale``, the latents chosen stay."""
        self.encoder.bias.div_(scale)
        self.b_dec.div_(scale)


def geometric_median(x: Tensor, iters: int = 50, eps: float = 1e-8) -> Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x`` (Weiszfeld)."""
    centre = x.mean(0)
    for _ in range(iters):
        weights = 1.0 / (x - centre).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if torch.allclose(new, centre, rtol=0, atol=1e-7):
            return new
        centre = new
    return centre

"""A small multi-layer perceptron with named, hookable components.

Module layout (paths are relative to :class:`MLPModel`; prefix them with
``mlp.`` for :class:`MLPForClassification`)::

    wte            optional token embedding (only when ``include_emb``)
    h[L]           block L: hidden -> dropout(act(ff1(hidden)))
    h[L].ff1       Linear(h_dim, h_dim)
    h[L].act       activation module
    h[L].dropout   Dropout(pdrop)

Hidden states always carry a "position" axis: an input of shape
``(batch, h_dim)`` is viewed as ``(batch, 1, h_dim)``, so every block output is
``(batch, 1, h_dim)`` and position 0 addresses the single "token".  Inputs
that already have a position axis, ``(batch, seq, h_dim)``, are processed
position-wise.  Blocks have no residual connection.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import BuiltinConfig, BuiltinModule, ModelOutput, output_tuple

logger = logging.getLogger(__name__)

__all__ = [
    "MLPConfig",
    "MLPBlock",
    "MLPModel",
    "MLPForClassification",
    "MLPModelOutput",
    "MLPClassifierOutput",
    "create_mlp_classifier",
    "make_activation",
]


class MLPConfig(BuiltinConfig):
    """Configuration of :class:`MLPModel` / :class:`MLPForClassification`.

    Args:
        h_dim: width of every hidden layer (and of the input).
        n_layer: number of blocks.
        num_classes: number of output classes of the classifier head.
        pdrop: dropout probability after each activation.
        include_bias: whether the linear layers have a bias.
        squeeze_output: the classifier returns ``(batch, num_classes)``
            logits (taken at the last position) instead of
            ``(batch, seq, num_classes)``.
        activation_function: one of ``"gelu"``, ``"gelu_new"``, ``"relu"``,
            ``"tanh"``, ``"sigmoid"``, ``"silu"``, ``"leaky_relu"``,
            ``"identity"``.
        include_emb: add a token embedding ``wte`` so that ``input_ids`` can
            be given instead of ``inputs_embeds``; requires ``vocab_size``.
        vocab_size: size of the token embedding.
        max_position_embeddings: add a learned position embedding ``wpe``
            (only with ``include_emb``); ``None`` means no position embedding.
    """

    model_type = "mlp"
    # set by BuiltinConfig.__init__ (declared for type checkers; no class attributes)
    h_dim: int
    n_layer: int
    num_classes: int
    pdrop: float
    include_bias: bool
    squeeze_output: bool
    activation_function: str
    include_emb: bool
    vocab_size: Optional[int]
    max_position_embeddings: Optional[int]

    def __init__(
        self,
        h_dim: int = 12,
        n_layer: int = 2,
        num_classes: int = 2,
        pdrop: float = 0.0,
        include_bias: bool = True,
        squeeze_output: bool = True,
        activation_function: str = "gelu",
        include_emb: bool = False,
        vocab_size: Optional[int] = None,
        max_position_embeddings: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            h_dim=h_dim,
            n_layer=n_layer,
            num_classes=num_classes,
            pdrop=pdrop,
            include_bias=include_bias,
            squeeze_output=squeeze_output,
            activation_function=activation_function,
            include_emb=include_emb,
            vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings,
            **kwargs,
        )

    # Hugging Face style aliases (read-only) so generic code can find sizes.
    @property
    def hidden_size(self) -> int:
        return self.h_dim

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_labels(self) -> int:
        return self.num_classes


class MLPModelOutput(ModelOutput):
    _fields = ("last_hidden_state", "hidden_states")


class MLPClassifierOutput(ModelOutput):
    _fields = ("loss", "logits", "hidden_states")


def make_activation(name: str) -> nn.Module:
    """Build the activation module called ``name``."""
    key = (name or "identity").lower()
    if key == "gelu":
        return nn.GELU()
    if key in ("gelu_new", "gelu_tanh", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if key == "relu":
        return nn.ReLU()
    if key == "tanh":
        return nn.Tanh()
    if key == "sigmoid":
        return nn.Sigmoid()
    if key in ("silu", "swish"):
        return nn.SiLU()
    if key == "leaky_relu":
        return nn.LeakyReLU()
    if key in ("identity", "linear", "none"):
        return nn.Identity()
    raise ValueError(f"unknown activation_function {name!r}")


class MLPBlock(nn.Module):
    """One MLP layer: ``dropout(act(ff1(x)))``."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.ff1 = nn.Linear(config.h_dim, config.h_dim, bias=config.include_bias)
        self.act = make_activation(config.activation_function)
        self.dropout = nn.Dropout(config.pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.ff1(hidden_states)))


class MLPModel(BuiltinModule):
    """A stack of :class:`MLPBlock` s; returns ``last_hidden_state``."""

    config: MLPConfig

    def __init__(self, config: Optional[MLPConfig] = None) -> None:
        super().__init__()
        config = MLPConfig() if config is None else config
        self.config = config
        if config.include_emb:
            if not config.vocab_size:
                raise ValueError("include_emb=True requires vocab_size")
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
            if config.max_position_embeddings:
                self.wpe = nn.Embedding(config.max_position_embeddings, config.h_dim)
        self.h = nn.ModuleList(MLPBlock(config) for _ in range(config.n_layer))

    def _embed(
        self,
        input_ids: Optional[torch.Tensor],
        inputs_embeds: Optional[torch.Tensor],
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            hidden = inputs_embeds
            if hidden.dim() == 2:
                hidden = hidden.unsqueeze(1)
            if hidden.dim() != 3 or hidden.shape[-1] != self.config.h_dim:
                raise ValueError(
                    "inputs_embeds must have shape (batch, h_dim) or "
                    f"(batch, seq, h_dim) with h_dim={self.config.h_dim}; got "
                    f"{tuple(inputs_embeds.shape)}"
                )
            return hidden
        if not hasattr(self, "wte"):
            raise ValueError(
                "this MLP has no embedding (config.include_emb=False); "
                "pass inputs_embeds instead of input_ids"
            )
        assert input_ids is not None  # exactly one of the two is given (checked above)
        ids = input_ids if input_ids.dim() == 2 else input_ids.reshape(input_ids.shape[0], -1)
        hidden = self.wte(ids)
        if hasattr(self, "wpe"):
            positions = torch.arange(ids.shape[1], device=ids.device)
            hidden = hidden + self.wpe(positions).unsqueeze(0)
        return hidden

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
    ):
        """Run the blocks.

        Args:
            input_ids: ``(batch,)`` or ``(batch, seq)`` token ids (needs
                ``include_emb``).
            inputs_embeds: ``(batch, h_dim)`` or ``(batch, seq, h_dim)``.
            attention_mask: accepted for API compatibility and ignored (the
                MLP mixes no information across positions).
            output_hidden_states: also return the input and every block's
                output, each ``(batch, seq, h_dim)``.
            return_dict: True: an :class:`MLPModelOutput`; otherwise (the default, as in
                pyvene) a tuple of the non-None fields that also reads them by name.
        """
        hidden = self._embed(input_ids, inputs_embeds)
        all_hidden: Optional[Tuple[torch.Tensor, ...]] = (hidden,) if output_hidden_states else None
        for block in self.h:
            hidden = block(hidden)
            if all_hidden is not None:
                all_hidden = all_hidden + (hidden,)
        out = MLPModelOutput(last_hidden_state=hidden, hidden_states=all_hidden)
        return out if return_dict else output_tuple(out)


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if num_classes == 1:
        return F.mse_loss(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))
    return F.cross_entropy(logits.reshape(-1, num_classes), labels.reshape(-1).long())


class MLPForClassification(BuiltinModule):
    """:class:`MLPModel` (as ``.mlp``) followed by a linear ``score`` head.

    With ``config.squeeze_output`` (the default) the logits are
    ``(batch, num_classes)``, read at the last position (the only one for
    ``(batch, h_dim)`` inputs); otherwise ``(batch, seq, num_classes)``.
    Given ``labels`` the output also holds ``loss``: cross-entropy, or mean
    squared error when ``num_classes == 1``.
    """

    config: MLPConfig

    def __init__(self, config: Optional[MLPConfig] = None) -> None:
        super().__init__()
        config = MLPConfig() if config is None else config
        self.config = config
        self.mlp = MLPModel(config)
        self.score = nn.Linear(config.h_dim, config.num_classes, bias=config.include_bias)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
    ):
        base = self.mlp(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(base.last_hidden_state)
        if self.config.squeeze_output:
            logits = logits[:, -1]
        loss = None
        if labels is not None:
            loss = _classification_loss(logits, labels, self.config.num_classes)
        out = MLPClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states)
        return out if return_dict else output_tuple(out)


def create_mlp_classifier(
    config: Optional[MLPConfig] = None, tokenizer_name: Optional[str] = None
):
    """Build a randomly initialised :class:`MLPForClassification`.

    Returns ``(config, tokenizer, model)``; the MLP takes embeddings directly,
    so ``tokenizer`` is always ``None`` (``tokenizer_name`` is accepted for
    API compatibility and ignored).
    """
    config = MLPConfig() if config is None else config
    if tokenizer_name is not None:
        logger.info("create_mlp_classifier ignores tokenizer_name=%r", tokenizer_name)
    model = MLPForClassification(config)
    return config, None, model

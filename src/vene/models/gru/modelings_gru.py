"""A small GRU language model / classifier whose recurrence is explicit.

The recurrence is written out in Python (no ``nn.GRU``), so every
:class:`GRUCell` is *called once per time step*: a forward hook on
``cells[L]`` fires ``seq_len`` times per forward pass, which lets
interventions target one time step of one layer.

Module layout (paths relative to :class:`GRUModel`; prefix them with
``gru.`` for :class:`GRULMHeadModel` / :class:`GRUForClassification`)::

    wte                 token embedding (vocab_size x h_dim), if include_emb
    cells[L]            GRUCell of layer L, called as cells[L](x_t, h_prev)
    cells[L].x2h        Linear(h_dim, 3*h_dim): input  -> (r, z, n) parts
    cells[L].h2h        Linear(h_dim, 3*h_dim): hidden -> (r, z, n) parts
    cells[L].reset_act  Sigmoid, gives r
    cells[L].update_act Sigmoid, gives z
    cells[L].new_act    Tanh, gives the candidate n

Cell equations (the convention of ``torch.nn.GRU``: the reset gate multiplies
the *projected* previous state, including the ``h2h`` bias)::

    x_r, x_z, x_n = x2h(x).chunk(3)
    h_r, h_z, h_n = h2h(h).chunk(3)
    r  = sigmoid(x_r + h_r)
    z  = sigmoid(x_z + h_z)
    n  = tanh(x_n + r * h_n)
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import BuiltinConfig, BuiltinModule, ModelOutput, output_tuple

logger = logging.getLogger(__name__)

__all__ = [
    "GRUConfig",
    "GRUCell",
    "GRUModel",
    "GRULMHeadModel",
    "GRUForClassification",
    "GRUModelOutput",
    "GRULMOutput",
    "GRUClassifierOutput",
    "create_gru",
    "create_gru_lm",
    "create_gru_classifier",
]


class GRUConfig(BuiltinConfig):
    """Configuration of the GRU models.

    Args:
        n_layer: number of stacked GRU layers (default 2, as in pyvene).
        h_dim: hidden (and embedding) width.
        vocab_size: size of the token embedding / LM head.
        num_classes: number of classes of :class:`GRUForClassification`.
        pdrop: dropout on the embeddings and between stacked layers.
        include_bias: whether ``x2h``, ``h2h`` and ``score`` have biases.
        include_emb: whether :class:`GRUModel` has a token embedding ``wte``.
        max_position_embeddings: longest sequence the model is meant for; the
            recurrence itself has no position limit, this is metadata for
            callers (e.g. to size inputs).
        pad_token_id: informational; padding is handled via ``attention_mask``.
    """

    model_type = "gru"
    # set by BuiltinConfig.__init__ (declared for type checkers; no class attributes)
    n_layer: int
    h_dim: int
    vocab_size: int
    num_classes: int
    pdrop: float
    include_bias: bool
    include_emb: bool
    max_position_embeddings: int
    pad_token_id: Optional[int]

    def __init__(
        self,
        n_layer: int = 2,
        h_dim: int = 512,
        vocab_size: int = 50257,
        num_classes: int = 2,
        pdrop: float = 0.0,
        include_bias: bool = True,
        include_emb: bool = True,
        max_position_embeddings: int = 512,
        pad_token_id: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            n_layer=n_layer,
            h_dim=h_dim,
            vocab_size=vocab_size,
            num_classes=num_classes,
            pdrop=pdrop,
            include_bias=include_bias,
            include_emb=include_emb,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    @property
    def hidden_size(self) -> int:
        return self.h_dim

    @property
    def n_embd(self) -> int:
        return self.h_dim

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_labels(self) -> int:
        return self.num_classes


class GRUModelOutput(ModelOutput):
    _fields = ("last_hidden_state", "final_state", "hidden_states")


class GRULMOutput(ModelOutput):
    _fields = ("loss", "logits", "hidden_states")


class GRUClassifierOutput(ModelOutput):
    _fields = ("loss", "logits", "hidden_states")


class GRUCell(nn.Module):
    """One GRU step; see the module docstring for the equations."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.h_dim = config.h_dim
        self.x2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.h2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.reset_act = nn.Sigmoid()
        self.update_act = nn.Sigmoid()
        self.new_act = nn.Tanh()

    def forward(
        self,
        current_states: torch.Tensor,
        hidden_states: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``current_states``: input ``(batch, h_dim)``; ``hidden_states``:
        previous state ``(batch, h_dim)`` (zeros if ``None``).  Returns the
        next state ``(batch, h_dim)``."""
        if hidden_states is None:
            hidden_states = current_states.new_zeros(current_states.shape[:-1] + (self.h_dim,))
        x_r, x_z, x_n = self.x2h(current_states).chunk(3, dim=-1)
        h_r, h_z, h_n = self.h2h(hidden_states).chunk(3, dim=-1)
        reset = self.reset_act(x_r + h_r)
        update = self.update_act(x_z + h_z)
        new = self.new_act(x_n + reset * h_n)
        return (1.0 - update) * new + update * hidden_states


class GRUModel(BuiltinModule):
    """Stacked GRU over a sequence, one explicit cell call per step and layer."""

    config: GRUConfig

    def __init__(self, config: Optional[GRUConfig] = None) -> None:
        super().__init__()
        config = GRUConfig() if config is None else config
        self.config = config
        if config.include_emb:
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
        self.dropout = nn.Dropout(config.pdrop)
        self.cells = nn.ModuleList(GRUCell(config) for _ in range(config.n_layer))

    def get_input_embeddings(self) -> Optional[nn.Embedding]:
        return getattr(self, "wte", None)

    def _initial_states(
        self, hidden_states: Optional[torch.Tensor], ref: torch.Tensor
    ) -> List[torch.Tensor]:
        n_layer, batch, h_dim = self.config.n_layer, ref.shape[0], self.config.h_dim
        if hidden_states is None:
            zeros = ref.new_zeros(batch, h_dim)
            return [zeros for _ in range(n_layer)]
        if hidden_states.dim() == 2:
            return [hidden_states for _ in range(n_layer)]
        if hidden_states.dim() == 3 and hidden_states.shape[0] == n_layer:
            return list(hidden_states.unbind(0))
        raise ValueError(
            "initial hidden_states must be (batch, h_dim) or "
            f"(n_layer, batch, h_dim); got {tuple(hidden_states.shape)}"
        )

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        hidden_states: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
    ):
        """Run the recurrence.

        Args:
            input_ids: ``(batch, seq)`` token ids (needs ``include_emb``).
            inputs_embeds: ``(batch, seq, h_dim)`` (or ``(batch, h_dim)`` for
                a single step).
            attention_mask: optional ``(batch, seq)``; at positions where it
                is 0 every layer keeps its previous state, so padding (left or
                right) does not change the state after the last real token.
            hidden_states: optional *initial* state, ``(batch, h_dim)`` for
                every layer or ``(n_layer, batch, h_dim)``; zeros if ``None``.
            output_hidden_states: also return the embeddings and each layer's
                outputs, each ``(batch, seq, h_dim)``.
            return_dict: True: a :class:`GRUModelOutput`; otherwise (the default, as in
                pyvene) a tuple of the non-None fields that also reads them by name.

        Returns ``last_hidden_state`` ``(batch, seq, h_dim)`` (top layer),
        ``final_state`` ``(n_layer, batch, h_dim)`` and, if asked,
        ``hidden_states``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            if not hasattr(self, "wte"):
                raise ValueError(
                    "this GRU has no embedding (config.include_emb=False); "
                    "pass inputs_embeds instead of input_ids"
                )
            assert input_ids is not None  # exactly one of the two is given (checked above)
            if input_ids.dim() == 1:
                input_ids = input_ids.unsqueeze(0)
            inputs_embeds = self.wte(input_ids)
        elif inputs_embeds.dim() == 2:
            inputs_embeds = inputs_embeds.unsqueeze(1)
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.h_dim:
            raise ValueError(
                "inputs_embeds must be (batch, seq, h_dim) with "
                f"h_dim={self.config.h_dim}; got {tuple(inputs_embeds.shape)}"
            )
        batch, seq_len, _ = inputs_embeds.shape
        if seq_len == 0:
            raise ValueError("GRUModel needs at least one time step")
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, seq_len):
                raise ValueError(
                    f"attention_mask must be {(batch, seq_len)}; got "
                    f"{tuple(attention_mask.shape)}"
                )
            mask = attention_mask.to(dtype=torch.bool).unsqueeze(-1)

        embeds = self.dropout(inputs_embeds)
        states = self._initial_states(hidden_states, embeds)
        per_layer: List[List[torch.Tensor]] = [[] for _ in range(self.config.n_layer)]
        last = self.config.n_layer - 1
        for t in range(seq_len):
            x = embeds[:, t]
            for layer, cell in enumerate(self.cells):
                new_state = cell(x, states[layer])
                if mask is not None:
                    new_state = torch.where(mask[:, t], new_state, states[layer])
                states[layer] = new_state
                per_layer[layer].append(new_state)
                x = new_state if layer == last else self.dropout(new_state)

        layer_outputs = [torch.stack(steps, dim=1) for steps in per_layer]
        all_hidden: Optional[Tuple[torch.Tensor, ...]] = None
        if output_hidden_states:
            all_hidden = (inputs_embeds,) + tuple(layer_outputs)
        out = GRUModelOutput(
            last_hidden_state=layer_outputs[-1],
            final_state=torch.stack(states, dim=0),
            hidden_states=all_hidden,
        )
        return out if return_dict else output_tuple(out)


class GRULMHeadModel(BuiltinModule):
    """:class:`GRUModel` (as ``.gru``) plus a linear ``lm_head`` (no bias).

    Given ``labels`` ``(batch, seq)`` (use -100 to ignore a position) the
    loss is the next-token cross-entropy: logits at position ``t`` predict
    ``labels[:, t + 1]``.
    """

    config: GRUConfig

    def __init__(self, config: Optional[GRUConfig] = None) -> None:
        super().__init__()
        config = GRUConfig() if config is None else config
        self.config = config
        self.gru = GRUModel(config)
        self.lm_head = nn.Linear(config.h_dim, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> Optional[nn.Embedding]:
        return self.gru.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        hidden_states: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
    ):
        base = self.gru(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            hidden_states=hidden_states,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(base.last_hidden_state)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].contiguous()
            shift_labels = labels[:, 1:].contiguous().to(logits.device)
            loss = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1).long(),
                ignore_index=-100,
            )
        out = GRULMOutput(loss=loss, logits=logits, hidden_states=base.hidden_states)
        return out if return_dict else output_tuple(out)


class GRUForClassification(BuiltinModule):
    """:class:`GRUModel` (as ``.gru``) plus a linear ``score`` head.

    The logits ``(batch, num_classes)`` are read from the top layer's state
    after the last time step; with an ``attention_mask`` that is the state
    after the last unmasked token (masked steps keep the state unchanged).
    Given ``labels`` the loss is cross-entropy (mean squared error when
    ``num_classes == 1``).
    """

    config: GRUConfig

    def __init__(self, config: Optional[GRUConfig] = None) -> None:
        super().__init__()
        config = GRUConfig() if config is None else config
        self.config = config
        self.gru = GRUModel(config)
        self.score = nn.Linear(config.h_dim, config.num_classes, bias=config.include_bias)

    def get_input_embeddings(self) -> Optional[nn.Embedding]:
        return self.gru.get_input_embeddings()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        hidden_states: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
    ):
        base = self.gru(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            hidden_states=hidden_states,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(base.last_hidden_state[:, -1])
        loss = None
        if labels is not None:
            if self.config.num_classes == 1:
                loss = F.mse_loss(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels.reshape(-1).long().to(logits.device))
        out = GRUClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states)
        return out if return_dict else output_tuple(out)


def create_gru(config: Optional[GRUConfig] = None):
    """Return ``(config, None, GRUModel(config))`` (random init, offline)."""
    config = GRUConfig() if config is None else config
    return config, None, GRUModel(config)


def create_gru_lm(config: Optional[GRUConfig] = None, tokenizer_name: Optional[str] = None):
    """Return ``(config, None, GRULMHeadModel(config))`` (random init, offline).

    ``tokenizer_name`` is accepted for API compatibility and ignored.
    """
    config = GRUConfig() if config is None else config
    if tokenizer_name is not None:
        logger.info("create_gru_lm ignores tokenizer_name=%r", tokenizer_name)
    return config, None, GRULMHeadModel(config)


def create_gru_classifier(config: Optional[GRUConfig] = None, tokenizer_name: Optional[str] = None):
    """Return ``(config, None, GRUForClassification(config))`` (random init).

    ``tokenizer_name`` is accepted for API compatibility and ignored.
    """
    config = GRUConfig() if config is None else config
    if tokenizer_name is not None:
        logger.info("create_gru_classifier ignores tokenizer_name=%r", tokenizer_name)
    return config, None, GRUForClassification(config)

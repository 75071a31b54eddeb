"""Models of the federated simulator as pure functions of a flat parameter vector, so that the S clients of a round
are one stacked tensor Y [S, d] (what the C++ layer reads and writes) and one batched computation trains them all:

    grads, losses = trainer.grads(Y, xb, yb)       # torch.func.vmap(grad_and_value(loss)) over the clients

Models: logreg (one linear layer; squared loss for the regression task), mlp (two hidden ReLU layers of `hidden`
units, the "2NN" of McMahan et al. 2017), cnn (conv5x5(16)-pool-conv5x5(32)-pool-fc(10)). Initialisation is torch's
default for the same layers with a generator seeded by the run's seed."""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

Shapes = List[Tuple[str, Tuple[int, ...]]]


class FlatModel:
    def __init__(self, kind: str, input_shape: Sequence[int], num_classes: int, hidden: int, regression: bool):
        self.kind = kind
        self.regression = regression
        self.num_classes = num_classes
        feat = int(math.prod(input_shape))
        if kind == "logreg":
            self.shapes: Shapes = [("w", (num_classes, feat)), ("b", (num_classes,))]
        elif kind == "mlp":
            self.shapes = [("w1", (hidden, feat)), ("b1", (hidden,)), ("w2", (hidden, hidden)), ("b2", (hidden,)),
                           ("w3", (num_classes, hidden)), ("b3", (num_classes,))]
        elif kind == "cnn":
            c, hgt, wid = input_shape
            h2, w2 = ((hgt - 4) // 2 - 4) // 2, ((wid - 4) // 2 - 4) // 2
            if h2 < 1 or w2 < 1:
                raise ValueError(f"gradzip.fedsim: input {tuple(input_shape)} is too small for the CNN")
            flat = 32 * h2 * w2
            self.shapes = [("c1", (16, c, 5, 5)), ("cb1", (16,)), ("c2", (32, 16, 5, 5)), ("cb2", (32,)),
                           ("w", (num_classes, flat)), ("b", (num_classes,))]
        else:
            raise ValueError(f"gradzip.fedsim: unknown model {kind!r}")
        self.numel = sum(math.prod(s) for _, s in self.shapes)

    # ------------------------------------------------------------------------------------------------------------
    def init(self, seed: int) -> torch.Tensor:
        """Flat float32 [d]: weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch's Linear/Conv2d defaults."""
        g = torch.Generator().manual_seed(seed)
        out = []
        fan_in = 1
        for name, shape in self.shapes:
            if len(shape) >= 2:
                fan_in = math.prod(shape[1:])
            bound = 1.0 / math.sqrt(fan_in)
            out.append((torch.rand(shape, generator=g) * 2 - 1).mul_(bound).reshape(-1))
        return torch.cat(out).contiguous()

    def unflatten(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Views of flat [..., d] as a dict of [..., *shape] tensors (no copies)."""
        lead = flat.shape[:-1]
        out, off = {}, 0
        for name, shape in self.shapes:
            n = math.prod(shape)
            out[name] = flat[..., off:off + n].reshape(*lead, *shape)
            off += n
        return out

    def flatten(self, parts: Dict[str, torch.Tensor], lead: int) -> torch.Tensor:
        return torch.cat([parts[name].reshape(lead, -1) for name, _ in self.shapes], dim=1)

    # ------------------------------------------------------------------------------------------------------------
    def forward(self, p: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.kind == "logreg":
            return F.linear(x, p["w"], p["b"])
        if self.kind == "mlp":
            h = F.relu(F.linear(x, p["w1"], p["b1"]))
            h = F.relu(F.linear(h, p["w2"], p["b2"]))
            return F.linear(h, p["w3"], p["b3"])
        h = F.max_pool2d(F.relu(F.conv2d(x, p["c1"], p["cb1"])), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, p["c2"], p["cb2"])), 2)
        return F.linear(h.flatten(-3), p["w"], p["b"])

    def loss(self, p: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.forward(p, x)
        if self.regression:
            return 0.5 * F.mse_loss(out[..., 0], y)
        return F.cross_entropy(out, y)

    @torch.no_grad()
    def evaluate(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> Tuple[float, float]:
        """(mean loss, accuracy) of the model flat [d] on (x, y); accuracy is NaN for regression."""
        p = self.unflatten(flat)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), batch):
            out = self.forward(p, x[i:i + batch])
            yb = y[i:i + batch]
            if self.regression:
                loss_sum += float(0.5 * F.mse_loss(out[:, 0], yb, reduction="sum"))
            else:
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(1) == yb).sum())
        n = max(len(x), 1)
        return loss_sum / n, (float("nan") if self.regression else correct / n)


class BatchedTrainer:
    """Gradients of every client in one computation over the stacked parameter rows [m, d].

    logreg and mlp: forward and backward written out as batched matrix products (torch.baddbmm/bmm over the client
    dimension), which avoids the per-call overhead of torch.func transforms; cnn: torch.func.vmap(grad_and_value).
    Both agree with per-client autograd (LoopTrainer) to float rounding (tested)."""

    def __init__(self, model: FlatModel):
        self.model = model
        self._vmap: Callable = vmap(grad_and_value(model.loss))

    def grads(self, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """y [m, d], xb [m, B, ...], yb [m, B] -> (G [m, d] contiguous float32, losses [m])."""
        if self.model.kind in ("logreg", "mlp"):
            return self._dense(y, xb, yb)
        g, loss = self._vmap(self.model.unflatten(y), xb, yb)
        return self.model.flatten(g, y.shape[0]).contiguous(), loss.detach()

    @torch.no_grad()
    def _dense(self, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        p = m.unflatten(y)
        batch = xb.shape[1]
        layers = [("w", "b")] if m.kind == "logreg" else [("w1", "b1"), ("w2", "b2"), ("w3", "b3")]
        acts = [xb]  # inputs of every layer
        pre = []  # pre-activations of the hidden layers
        h = xb
        for i, (w, b) in enumerate(layers):
            z = torch.baddbmm(p[b].unsqueeze(1), h, p[w].transpose(1, 2))  # [m, B, out]
            if i + 1 < len(layers):
                pre.append(z)
                h = torch.relu(z)
                acts.append(h)
            else:
                h = z
        out = h
        if m.regression:
            err = out[..., 0] - yb
            loss = 0.5 * (err * err).mean(dim=1)
            dz = (err / batch).unsqueeze(2)
        else:
            logp = torch.log_softmax(out, dim=2)
            loss = -logp.gather(2, yb.unsqueeze(2)).squeeze(2).mean(dim=1)
            dz = logp.exp_()
            dz.scatter_add_(2, yb.unsqueeze(2), torch.full_like(dz[..., :1], -1.0))
            dz.div_(batch)
        grads = {}
        for i in range(len(layers) - 1, -1, -1):
            w, b = layers[i]
            grads[w] = torch.bmm(dz.transpose(1, 2), acts[i])
            grads[b] = dz.sum(dim=1)
            if i > 0:
                dz = torch.bmm(dz, p[w]) * (pre[i - 1] > 0)
        return m.flatten(grads, y.shape[0]).contiguous(), loss


class LoopTrainer:
    """The straightforward baseline: one client after the other, each with its own autograd pass."""

    def __init__(self, model: FlatModel):
        self.model = model

    def grads(self, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        m = y.shape[0]
        out = torch.empty_like(y)
        losses = torch.empty(m)
        for j in range(m):
            w = y[j].detach().clone().requires_grad_(True)
            loss = self.model.loss(self.model.unflatten(w), xb[j], yb[j])
            (g,) = torch.autograd.grad(loss, w)
            out[j] = g
            losses[j] = loss.detach()
        return out, losses


def build(kind: str, input_shape: Sequence[int], num_classes: int, hidden: int, regression: bool) -> FlatModel:
    return FlatModel(kind, input_shape, num_classes, hidden, regression)

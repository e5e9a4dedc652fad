"""A Lightning callback that tracks sharpness against the edge of stability: ``EdgeMonitorCallback``.

Needs ``lightning`` (``pip install samedge[lightning]``); ``import samedge`` does not import it.
Every ``every`` training batches the callback runs a ``samedge.EdgeMonitor`` at the current
weights and logs its row (``op_norm``, ``edge``, ``ratio``, ...) through the trainer's loggers,
prefixed by ``prefix``. It counts training batches itself, so it works with automatic
optimization (``torch.optim.SGD`` from ``configure_optimizers``) and with manual optimization
using ``samedge.SAM``.

SAM under manual optimization: take the SAM step through the ``LightningOptimizer`` that
``self.optimizers()`` returns, with SAM's closure form (``opt.step(closure)``: ascent to w~,
the closure's forward-backward there, back to w and the base step)::

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()

        def closure():  # the loss and its gradient at w~, on the same batch
            loss = self.loss(batch)
            self.manual_backward(loss)
            return loss

        opt.zero_grad()
        loss = self.loss(batch)
        self.manual_backward(loss)  # the gradient at w
        opt.step(closure)  # one SAM step; Lightning counts it in global_step
        return loss

    trainer = pl.Trainer(max_steps=50, callbacks=[EdgeMonitorCallback(nn.MSELoss(), (x, y), every=10)])

Do not call ``opt.first_step()`` / ``opt.second_step()`` (the davda54 two-step form) here: they
reach ``samedge.SAM`` through ``LightningOptimizer.__getattr__``, around ``LightningOptimizer.step``,
which is what advances ``trainer.global_step`` under manual optimization. The weights train, but
``global_step`` stays 0, so ``Trainer(max_steps=...)`` never stops (only ``max_epochs`` does) and
step-based schedules, logging and checkpointing all see step 0.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import lightning.pytorch as pl
import torch

from .columns import STEP
from .monitor import EdgeMonitor

__all__ = ["EdgeMonitorCallback"]


class EdgeMonitorCallback(pl.Callback):
    """Run an ``EdgeMonitor`` on ``data`` every ``every`` training batches and log its rows.

    ``loss_fn(outputs, targets)`` with ``outputs = pl_module(inputs)``; ``data`` one batch or an
    iterable of batches (see ``EdgeMonitor``); ``optimizer_index`` picks the trainer's optimizer
    whose edge applies; further keyword arguments go to ``EdgeMonitor`` (``tol``, ``eval_data``, ...).
    ``measure_at_start`` also measures before the first step (logged at step 0).
    """

    def __init__(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: Any,
        every: int = 10,
        prefix: str = "monitor/",
        optimizer_index: int = 0,
        measure_at_start: bool = False,
        **monitor_kwargs: Any,
    ):
        super().__init__()
        self.loss_fn, self.data, self.every, self.prefix = loss_fn, data, every, prefix
        self.optimizer_index, self.measure_at_start, self.monitor_kwargs = (
            optimizer_index,
            measure_at_start,
            monitor_kwargs,
        )
        self.monitor: Optional[EdgeMonitor] = None

    @property
    def rows(self) -> List[Dict[str, Any]]:
        """The rows measured so far (empty before training)."""
        return self.monitor.rows if self.monitor is not None else []

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Build the monitor on the module and optimizer the trainer now holds (on its device)."""
        if not trainer.optimizers:
            raise ValueError("EdgeMonitorCallback needs an optimizer: configure_optimizers returned none")
        optimizer = trainer.optimizers[self.optimizer_index]
        self.monitor = EdgeMonitor(
            pl_module, self.loss_fn, self.data, optimizer, every=self.every, **self.monitor_kwargs
        )
        if self.measure_at_start:
            self._log(trainer, self.monitor.measure())

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the step; every ``every`` steps measure and log."""
        row = self.monitor.step()
        if row is not None:
            self._log(trainer, row)

    def _log(self, trainer: "pl.Trainer", row: Dict[str, Any]) -> None:
        # Loggers take numbers: None (no edge for this optimizer) is left out, booleans become 0/1.
        metrics = {f"{self.prefix}{k}": float(v) for k, v in row.items() if k != STEP and v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=row[STEP])

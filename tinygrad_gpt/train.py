"""The book's chapter-5 training loop and its helpers, under the book's names.

`train_model_simple` has the book's signature and returns what the book's returns; it calls
`train_model` with everything extra off. `train_model` is the book's loop with
what a long CPU run needs on top (all off by default): a learning-rate schedule, gradient
clipping and accumulation, a live progress line, callbacks for checkpoints, and a
`TrainState` (checkpoint.py's) that lets a run stop and resume exactly where it was.
"""
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import functional as F
from . import fileio
from .checkpoint import TrainState
from .generation import generate
from .optim import clip_grad_norm_, lr_at_step
from .tensor import no_grad
from .tokenizer import text_to_token_ids, token_ids_to_text


# ----------------------------------------------------------------------------- losses
def calc_loss_batch(input_batch, target_batch, model, device=None):
    """Mean cross-entropy of one batch: logits (B, T, V) against targets (B, T)."""
    logits = model(input_batch)                                  # (B, T, V)
    return F.cross_entropy(logits, target_batch)


def calc_loss_loader(data_loader, model, device=None, num_batches=None, loss_batch=None):
    """Average loss over the first `num_batches` batches (all by default), as the book (ch06's
    classifier passes its own `loss_batch`)."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += (loss_batch or calc_loss_batch)(input_batch, target_batch, model).item()
    return total / num_batches


def evaluate_model(model, train_loader, val_loader, device=None, eval_iter=None, loss_batch=None):
    model.eval()
    with no_grad():
        train_loss = calc_loss_loader(train_loader, model, num_batches=eval_iter, loss_batch=loss_batch)
        val_loss = calc_loss_loader(val_loader, model, num_batches=eval_iter, loss_batch=loss_batch)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50, file=None):
    """Greedy continuation of start_context, printed on one line."""
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer)        # (1, n)
    # greedy, as the book's generate_text_simple, but with the KV cache: the same tokens,
    # each costing one position's forward instead of the whole prefix's (3.5 s -> 1.1 s)
    token_ids = generate(model, encoded, max_new_tokens, context_size)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "), file=file, flush=True)
    model.train()


# ----------------------------------------------------------------------------- the loop
class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or infinite at `step`."""

    def __init__(self, step, what):
        super().__init__(f"{what} is not finite at step {step}")
        self.step, self.what = step, what


def global_grad_norm(params):
    return math.sqrt(sum(float(np.dot(p.grad.ravel(), p.grad.ravel())) for p in params if p.grad is not None))


def block_grad_norms(model):
    """The gradient norm of each transformer block's parameters (the gradient-flow view)."""
    return [global_grad_norm(block.parameters()) for block in model.trf_blocks]


class Progress:
    """A live line on stderr: epoch, step, loss, tokens/s, ETA. Silent when not a terminal."""

    def __init__(self, total_steps, enabled=None, stream=None):
        stream = sys.stderr if stream is None else stream      # looked up now, not at import
        self.total_steps, self.stream = total_steps, stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.start, self.tokens, self.steps = time.perf_counter(), 0, 0

    def update(self, epoch, num_epochs, step, loss, tokens):
        self.tokens += tokens
        self.steps += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        left = (self.total_steps - step - 1) * elapsed / self.steps
        self._write(f"\r  epoch {epoch + 1}/{num_epochs}  step {step + 1}/{self.total_steps}  "
                    f"loss {loss:.3f}  {self.tokens / elapsed:,.0f} tok/s  "
                    f"ETA {int(left // 60):d}:{int(left % 60):02d} ")

    def clear(self):
        if self.enabled:
            self._write("\r" + " " * 78 + "\r")

    def _write(self, text):
        """The line only reports: a stream that refuses it (closed, a full disk under a
        redirect) turns it off, never stops the run."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


@dataclass(frozen=True)
class TrainConfig:
    """What the loop is told: the book's four arguments, then appendix D's options (all off
    by default). peak_lr None: the optimizer's lr."""
    num_epochs: int
    eval_freq: int
    eval_iter: int
    start_context: str
    peak_lr: Optional[float] = None
    warmup_steps: int = 0
    min_lr: Optional[float] = None
    grad_clip: Optional[float] = None            # from the step the warmup ends (appendix D's global_step >= warmup_steps)
    accum_steps: int = 1
    log_grad_norms: bool = False
    max_steps: Optional[int] = None              # stop after this many optimizer steps (the schedule's length)


def train_model(model, train_loader, val_loader, optimizer, tokenizer, config, *, state=None,
                on_step=None, on_eval=None, progress=None, out=None, data_parallel=None):
    """The book's train_model_simple, resumable, with appendix D's options (a TrainConfig).
    Returns the state.

    on_step(state) runs after every optimizer step and its evaluation, and once more at each
    epoch's end, after the sample (checkpoints hook in here: the state then is complete).
    on_eval(record) gets each evaluation's numbers, unrounded: step, epoch, tokens_seen,
    train_loss, val_loss, lr, tokens_per_s and elapsed (seconds since this call began).
    A NaN or infinite loss or gradient raises NonFiniteLossError before the optimizer step.
    data_parallel (distributed.DataParallel): each process's batches are its slice of the
    global batch; its reduce_step averages gradients and losses over the processes.
    """
    c = config
    num_epochs, eval_freq, eval_iter, accum_steps = c.num_epochs, c.eval_freq, c.eval_iter, c.accum_steps
    out = sys.stdout if out is None else out
    state = TrainState() if state is None else state
    params = model.parameters()
    steps_per_epoch = len(train_loader) // accum_steps
    total_steps = num_epochs * steps_per_epoch
    if c.max_steps is not None:
        total_steps = min(total_steps, c.max_steps)
    peak_lr = optimizer.param_groups[0]["lr"] if c.peak_lr is None else c.peak_lr
    start, start_tokens = time.perf_counter(), state.tokens_seen
    model.train()
    for epoch in range(state.epoch, num_epochs):
        if state.global_step + 1 >= total_steps:  # max_steps reached at an epoch's end
            break
        if not hasattr(train_loader, "iter_batches"):     # any iterable of batches (no exact resume)
            batches = iter(train_loader)
            for _ in range(state.batch):
                next(batches)
        else:
            if state.order is None:              # a new epoch: draw its batch order
                state.order = [int(i) for i in train_loader.epoch_order()]
            batches = train_loader.iter_batches(np.asarray(state.order), start=state.batch)
        while state.batch + accum_steps <= len(train_loader) and state.global_step + 1 < total_steps:
            step = state.global_step + 1
            for group in optimizer.param_groups:
                group["lr"] = lr_at_step(step, peak_lr, total_steps, c.warmup_steps, c.min_lr)
            optimizer.zero_grad()
            step_loss, step_tokens = 0.0, 0
            for _ in range(accum_steps):
                input_batch, target_batch = next(batches)
                loss = calc_loss_batch(input_batch, target_batch, model)
                if accum_steps > 1:
                    loss = loss * (1.0 / accum_steps)
                loss.backward()
                step_loss += loss.item()
                step_tokens += input_batch.size
            if data_parallel is not None:        # one Allreduce: the global batch's mean gradient
                step_loss, step_tokens = data_parallel.reduce_step(params, step_loss, step_tokens)
            if not math.isfinite(step_loss):
                raise NonFiniteLossError(step, "the loss")
            # per-block norms before clipping, so that they add up to the global norm printed
            grad_view = [step, None, block_grad_norms(model)] if c.log_grad_norms and step % eval_freq == 0 else None
            if c.grad_clip is not None and step >= c.warmup_steps:   # after the warmup, as appendix D
                norm = clip_grad_norm_(params, c.grad_clip)
            else:                                # checked every step: one NaN would poison AdamW's moments
                norm = global_grad_norm(params)
            if not math.isfinite(norm):
                raise NonFiniteLossError(step, "the gradient norm")
            if grad_view is not None:
                grad_view = (step, norm, grad_view[2])
            optimizer.step()
            state.batch += accum_steps
            state.tokens_seen += step_tokens
            state.global_step = step
            if progress is not None:
                progress.update(epoch, num_epochs, step, step_loss, step_tokens)

            if step % eval_freq == 0:            # the book's evaluation, printed as the book
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, eval_iter=eval_iter)
                if data_parallel is not None:
                    train_loss, val_loss = data_parallel.average_eval(train_loss, val_loss)
                state.train_losses.append(train_loss)
                state.val_losses.append(val_loss)
                state.track_tokens_seen.append(state.tokens_seen)
                if progress is not None:
                    progress.clear()
                print(f"Ep {epoch + 1} (Step {step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}", file=out, flush=True)
                if on_eval is not None:
                    elapsed = time.perf_counter() - start
                    on_eval({"step": step, "epoch": epoch + 1, "tokens_seen": state.tokens_seen,
                             "train_loss": train_loss, "val_loss": val_loss,
                             "lr": optimizer.param_groups[0]["lr"],
                             "tokens_per_s": (state.tokens_seen - start_tokens) / max(elapsed, 1e-9),
                             "elapsed": elapsed})
                if grad_view is not None:
                    state.grad_norms.append(grad_view)
                    blocks = " ".join(f"{n:.3g}" for n in grad_view[2])
                    print(f"  grad norm {grad_view[1]:.3f}; per block: {blocks}", file=out, flush=True)
            if on_step is not None:
                on_step(state)

        if progress is not None:
            progress.clear()
        generate_and_print_sample(model, tokenizer, None, c.start_context, file=out)
        if state.batch + accum_steps <= len(train_loader):       # max_steps stopped it inside the epoch
            break
        state.epoch, state.batch, state.order = epoch + 1, 0, None
        if on_step is not None:
            on_step(state)
    return state


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer):
    """The book's loop: returns train_losses, val_losses, tokens_seen."""
    config = TrainConfig(num_epochs, eval_freq, eval_iter, start_context)
    state = train_model(model, train_loader, val_loader, optimizer, tokenizer, config)
    return state.train_losses, state.val_losses, state.track_tokens_seen


# ----------------------------------------------------------------------------- the plot
def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path="loss-plot.png", grad_norms=None):
    """The book's plot: training and validation loss against epochs, tokens seen on a second
    x-axis; with grad_norms [(step, norm, per-block)], a second panel of gradient norms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 2 if grad_norms else 1
    fig, axes = plt.subplots(panels, 1, figsize=(5, 3 * panels), squeeze=False)
    ax1 = axes[0][0]
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()
    ax2.plot(tokens_seen, train_losses, alpha=0)              # invisible: aligns the ticks
    ax2.set_xlabel("Tokens seen")
    if grad_norms:
        ax3 = axes[1][0]
        steps = [s for s, _, _ in grad_norms]
        ax3.plot(steps, [n for _, n, _ in grad_norms], color="black", label="global")
        per_block = np.array([b for _, _, b in grad_norms])
        colors = plt.cm.viridis(np.linspace(0, 1, per_block.shape[1]))   # dark = first block
        for i in range(per_block.shape[1]):
            last = i in (0, per_block.shape[1] - 1)
            ax3.plot(steps, per_block[:, i], color=colors[i], linewidth=0.8, label=f"block {i}" if last else None)
        ax3.set_xlabel("Step")
        ax3.set_ylabel("Gradient norm")
        ax3.set_yscale("log")
        ax3.legend(loc="best", fontsize="small")
    fig.tight_layout()
    try:
        fileio.save_figure(fig, path)
    finally:
        plt.close(fig)
    return path

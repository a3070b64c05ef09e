"""ThroughputMonitor: rates from real steps, FLOPs counted once, MFU with a given peak."""

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.data.test_text_spec import xlmr_like_tokenizer
from vlp.callbacks import ThroughputMonitor
from vlp.callbacks.throughput import meta_copy, training_flops
from vlp.data.text_spec import bind_parts
from vlp.errors import VLPError


class _Data(LightningDataModule):
    """The same batch five times, and the tokenizer that made its text."""

    def __init__(self, tokenizer, batch):
        super().__init__()
        self.tokenizer, self.batch = tokenizer, batch

    def train_dataloader(self):
        return torch.utils.data.DataLoader([self.batch] * 5, batch_size=None)


def _trainer(monitor):
    return Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", callbacks=[monitor])


def test_throughput_monitor_logs_rates_and_flops(tiny_module, tmp_path):
    # an XLM-R-like tokenizer: its padding is id 1 and its start token id 0, which is text
    tokenizer = xlmr_like_tokenizer(tmp_path, context_length=16)
    bind_parts(tiny_module, tokenizer.spec)
    batch = {"image": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "text": tokenizer([f"grinning face {'with smiling eyes ' * (i % 3)}" for i in range(8)])}
    monitor = ThroughputMonitor(log_every_n_steps=2, warmup_steps=1, peak_flops=1e12)
    _trainer(monitor).fit(tiny_module, datamodule=_Data(tokenizer, batch))
    m = monitor.last
    assert m["throughput/samples_per_s"] > 0 and m["throughput/step_s"] > 0
    tokens_per_sample = int((batch["text"] != 1).sum()) / 8
    assert tokens_per_sample != int((batch["text"] != 0).sum()) / 8
    assert abs(m["throughput/text_tokens_per_s"] / m["throughput/samples_per_s"] - tokens_per_sample) < 1e-6
    # forward + backward of the towers: at least 2 x 2 x (parameters in matmuls) FLOPs per sample
    matmul_params = sum(p.numel() for n, p in tiny_module.named_parameters() if p.ndim == 2)
    assert m["throughput/flops_per_sample"] > 2 * matmul_params
    expected_mfu = m["throughput/flops_per_sample"] * m["throughput/samples_per_s"] / 1e12
    assert abs(m["throughput/mfu"] - expected_mfu) < 1e-9


def test_throughput_monitor_needs_the_tokenizers_spec(tiny_module):
    loader = torch.utils.data.DataLoader([{"image": torch.zeros(2, 3, 32, 32)}], batch_size=None)
    with pytest.raises(VLPError, match="ThroughputMonitor counts text tokens with the tokenizer's pad id"):
        _trainer(ThroughputMonitor()).fit(tiny_module, train_dataloaders=loader)


@pytest.mark.parametrize("frozen_image_tower", [False, True])
def test_flops_per_sample_are_those_of_a_real_training_step(tiny_module, frozen_image_tower):
    # counted on a meta-device copy: the same count as a real forward + backward on the sample
    # (attention through the math kernel, the one whose FLOPs torch's counter sees on a CPU;
    # a frozen tower, as LiT's, gets no weight gradients), and the module's gradients and the
    # RNG are left as they were
    tiny_module.towers["image"].requires_grad_(not frozen_image_tower)
    sample = {"image": torch.randn(4, 3, 32, 32), "text": torch.randint(3, 100, (4, 16))}
    rng = torch.get_rng_state()
    counted = training_flops(meta_copy(tiny_module), sample)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in tiny_module.parameters())
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as real:
        outputs = tiny_module(sample)
        sum(o.weight * o(outputs, sample)[0] for o in tiny_module.objectives).backward()
    assert counted == real.get_total_flops() > 0

"""ThroughputMonitor: rates from real steps, FLOPs counted once, MFU with a given peak."""

import torch
from lightning.pytorch import Trainer

from vlp.callbacks import ThroughputMonitor


def test_throughput_monitor_logs_rates_and_flops(tiny_module):
    from tests.test_module import _batch

    monitor = ThroughputMonitor(log_every_n_steps=2, warmup_steps=1, peak_flops=1e12)
    trainer = Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=[monitor])
    batch = _batch(8)
    trainer.fit(tiny_module, train_dataloaders=torch.utils.data.DataLoader([batch] * 5, batch_size=None))
    m = monitor.last
    assert m["throughput/samples_per_s"] > 0 and m["throughput/step_s"] > 0
    tokens_per_sample = int((batch["text"] != 0).sum()) / 8
    assert abs(m["throughput/text_tokens_per_s"] / m["throughput/samples_per_s"] - tokens_per_sample) < 1e-6
    # forward + backward of the towers: at least 2 x 2 x (parameters in matmuls) FLOPs per sample
    matmul_params = sum(p.numel() for n, p in tiny_module.named_parameters() if p.ndim == 2)
    assert m["throughput/flops_per_sample"] > 2 * matmul_params
    expected_mfu = m["throughput/flops_per_sample"] * m["throughput/samples_per_s"] / 1e12
    assert abs(m["throughput/mfu"] - expected_mfu) < 1e-9

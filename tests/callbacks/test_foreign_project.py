"""The README's "use the callbacks in your own project" example, run exactly as written there."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_callbacks_work_in_a_plain_project_with_a_torchvision_model_and_xy_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes lightning_logs/ and checkpoints to the working directory
    section = README[README.index("## Use the callbacks in your own project") :]
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), namespace)
    trainer, callbacks = namespace["trainer"], namespace["callbacks"]

    logged = trainer.callback_metrics
    for key in ("probe/label/acc", "probe/attribute/error", "importance/gini_real", "importance/gini_phantom"):
        assert key in logged
        assert torch.isfinite(logged[key])
    assert len(callbacks[0].history) == 1
    assert len(callbacks[1].history) == 1
    assert len(list((tmp_path / "lightning_logs").rglob("events.out.tfevents.*"))) == 1

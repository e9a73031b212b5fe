"""One data-parallel step on 2 CPU devices equals the 1-device step."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import ml_collections
    import numpy as np
    from configs import joint
    from pvl_jax.training import losses
    from pvl_jax.training import parallel as parallel_lib
    from pvl_jax.training import steps
    from pvl_jax.models import unet

    config = joint.get_config("demo")
    config.data.patch_size = (16, 16, 16)
    config.model.features = (4, 8, 16)
    config.batch_size = 4
    model = unet.unet_from_config(config.model)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(4, 16, 16, 16, 1)).astype(np.float32),
        "label": (rng.random((4, 16, 16, 16)) > 0.9).astype(np.int32),
        "hand_function": np.array([0, 1, 1, 0], np.int32),
    }
    assert jax.device_count() == 2, jax.devices()
    params = {}
    for n in (1, 2):
      parallel = parallel_lib.DataParallel(jax.devices()[:n])
      state = steps.create_train_state(config, model, unet.init_key(0), 1)
      state = jax.device_put(state, parallel.replicated)
      step = parallel.jit(steps.make_train_step(model, r=0.5,
                                                seg_loss=losses.SegLoss()))
      global_batch = parallel.global_batch(batch)
      assert len(global_batch["image"].sharding.device_set) == n
      for _ in range(2):
        state, metrics = step(state, global_batch)
      params[n] = jax.device_get(state.params)
    diffs = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b))), params[1], params[2]))
    print("MAXDIFF", max(diffs))
    assert max(diffs) < 1e-5, max(diffs)
""")

# The located head's step: the memory rows are written from a sharded batch
# into the replicated state.
LOCATED_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np
    from configs import joint
    from pvl_jax.data import template_position
    from pvl_jax.models import located_head
    from pvl_jax.training import located_step
    from pvl_jax.training import losses
    from pvl_jax.training import parallel as parallel_lib
    from pvl_jax.models import unet

    config = joint.get_config("demo")
    config.r = 1.0
    config.data.patch_size = (16, 16, 16)
    config.model.features = (4, 8, 16)
    config.model.cls_head = "located"
    # Well conditioned: the read-out fit on 3 subjects solves exactly.
    config.model.cls_readout_l2 = 0.1
    config.model.cls_template_shape = (24, 20, 16)
    config.batch_size = 4
    settings = located_step.LocatedSettings.from_config(config)
    model = unet.unet_from_config(config.model)
    rng = np.random.default_rng(0)
    starts = [(0, 0, 0), (8, 4, 0), (4, 2, 0), (8, 0, 0)]
    batch = {
        "image": rng.normal(size=(4, 16, 16, 16, 1)).astype(np.float32),
        "label": (rng.random((4, 16, 16, 16)) > 0.9).astype(np.int32),
        "hand_function": np.array([0, 1, 1, -1], np.int32),
        "subject_index": np.array([0, 1, 2, 1], np.int32),
        template_position.KEY: np.stack([template_position.cut_position(
            (0, 0, 0), s, 3, 2) for s in starts]),
    }
    mask = (rng.random(settings.num_blocks) > 0.3).astype(np.float32)
    results = {}
    for n in (1, 2):
      parallel = parallel_lib.DataParallel(jax.devices()[:n])
      state = located_step.create_train_state(
          config, model, unet.init_key(0), 1,
          located_head.LocatedMemory.create(mask, np.array([0, 1, 1])))
      state = jax.device_put(state, parallel.replicated)
      step = parallel.jit(located_step.make_train_step(
          model, config.r, losses.SegLoss(), settings))
      for _ in range(2):
        state, _ = step(state, parallel.global_batch(batch))
      results[n] = jax.device_get((state.params, state.memory.rows))
    assert np.asarray(results[1][1]).any()
    diffs = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b))), results[1], results[2]))
    print("MAXDIFF", max(diffs))
    assert max(diffs) < 1e-5, max(diffs)
""")


@pytest.mark.parametrize("script", [SCRIPT, LOCATED_SCRIPT],
                         ids=["patch", "located"])
def test_two_device_step_matches_single_device(script):
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MAXDIFF" in result.stdout

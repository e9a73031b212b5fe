"""One data-parallel step on 2 CPU devices equals the 1-device step."""

import subprocess
import sys
import textwrap

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


def test_two_device_step_matches_single_device():
  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MAXDIFF" in result.stdout

"""Subprocess body for checkpoint_test: a tiny run that SIGKILLs itself.

argv: WORKDIR KILL_EPOCH KILL_STEP. The run is killed after KILL_STEP
training steps of (0-based) student epoch KILL_EPOCH, i.e. mid-epoch, after
the checkpoints of the earlier epochs were written.
"""
import os
import signal
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from acs_jax import env  # noqa: E402
env.set_xla_defaults()  # as the in-process run it is compared with
env.hide_gpus_from_tensorflow()
env.configure_jax()

from acs_jax import rngs  # noqa: E402
from acs_jax import train  # noqa: E402
import checkpoint_test  # noqa: E402  pylint: disable=g-import-not-at-top


def main():
  workdir, kill_epoch, kill_step = sys.argv[1], int(sys.argv[2]), int(
      sys.argv[3])
  original = train.input_pipeline.make_train_iterator
  student_seed = rngs.host_seed(checkpoint_test.resume_config().seed,
                                "student_data")

  def killing_iterator(dataset, indices, **kw):
    it = original(dataset, indices, **kw)
    if kw.get("epoch") != kill_epoch or kw.get("seed") != student_seed:
      return it  # the teacher stage, the calibration batch or another epoch

    def gen():
      for i, batch in enumerate(it):
        if i == kill_step:
          # The previous epoch's checkpoint is written asynchronously: the
          # kill comes once it is committed (named latest/KILL_EPOCH), so the
          # run resumes from it, not from the one before.
          done = os.path.join(workdir, "checkpoints", "train", "latest",
                              str(kill_epoch))
          deadline = time.time() + 300
          while not os.path.isdir(done) and time.time() < deadline:
            time.sleep(0.05)
          os.kill(os.getpid(), signal.SIGKILL)
        yield batch
    return gen()

  train.input_pipeline.make_train_iterator = killing_iterator
  train.train_and_evaluate(checkpoint_test.resume_config(), workdir)


if __name__ == "__main__":
  main()

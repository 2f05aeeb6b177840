"""Train a tiny Keras 3 model with cirron: one callback, nothing else to write.

    python examples/keras_train.py                       # TensorFlow backend
    KERAS_BACKEND=torch python examples/keras_train.py   # torch backend (TensorFlow never imported)
    cirron traces view                                    # the recorded tree

Without ``ci.profile()`` the callback starts profiling itself; the spool lands in ./.cirron/.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

import cirron as ci
from cirron.integrations.keras import CirronCallback


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")

    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])

    # epochs, batches, validation, data_load; logs as marks; weight statistics per epoch
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        validation_split=0.2,
        verbose=0,
        callbacks=[CirronCallback(log_every_n_batches=2)],
    )

    # or: instrument the model once, every fit/evaluate/predict records itself
    model = ci.wrap(model)
    model.evaluate(x, y, batch_size=128, verbose=0)  # a "test" span
    model.predict(x[:64], batch_size=32, verbose=0)  # a "predict" span

    print(ci.trace(depth=2))  # session, epochs/test/predict, their children
    ci.shutdown()


if __name__ == "__main__":
    main()

"""Model and data files in.

Keras 2/3 files and SavedModels, ``.npz``/``.npy`` data, the Keras 3 bridge.

Nothing here imports the passes; TensorFlow is imported only when a model is loaded.
"""

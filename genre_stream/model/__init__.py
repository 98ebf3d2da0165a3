"""The model: the ONNX engine, streaming inference, calibration, the music gate, the bundled exports and which one runs."""

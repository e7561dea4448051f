"""Training: settings (``config``), the jit-compiled step (``step``), the loop with
checkpoints and resume (``loop``), batches (``data``) and HDF5 patch sets (``patches``)."""

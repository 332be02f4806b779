"""Everything the package writes to or reads from disk, in one place.

* :mod:`.atomic` — atomic file writes (temporary file, fsync, rename; umask permissions) and clean-up of the
  temporaries a kill leaves;
* :mod:`.weights` — safetensors files with clear errors and a NaN/Inf check; whole DHKD model files;
* :mod:`.checkpoint` — kill-safe checkpoint pairs (generation-named tensor file + JSON written last) and the
  optimizer-state split, used by training and teacher distillation;
* :mod:`.teacher` — teacher (PDN) weight files in every public layout.
"""
from .atomic import atomic_write, atomic_write_bytes, atomic_write_json, remove_temporaries
from .checkpoint import CheckpointError, CheckpointFiles, load_optimizer_state, optimizer_state
from .teacher import TeacherFileError, load_teacher, save_teacher
from .weights import WeightsFileError, check_finite, load_model, read_safetensors, save_model, save_safetensors

__all__ = ["CheckpointError", "CheckpointFiles", "TeacherFileError", "WeightsFileError", "atomic_write",
           "atomic_write_bytes", "atomic_write_json", "check_finite", "load_model", "load_optimizer_state",
           "load_teacher", "optimizer_state", "read_safetensors", "remove_temporaries", "save_model",
           "save_safetensors", "save_teacher"]

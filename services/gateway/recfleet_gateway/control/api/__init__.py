"""The `/admin/v1` routes (scope `admin`): map JSON to calls on the control plane and back,
nothing else."""

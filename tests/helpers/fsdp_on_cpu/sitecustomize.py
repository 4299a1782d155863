"""Test-only: let Accelerate's real FSDP (and DeepSpeed) code path run on CPU processes (gloo).

Accelerate turns FSDP on only for accelerator devices; on a CPU-only machine an FSDP config becomes
MULTI_CPU (DDP). torch's FSDP (``fully_shard`` and FSDP1) does run on CPU with gloo, so when
``HFSSL_TEST_FSDP_ON_CPU=1`` and this folder is on ``PYTHONPATH``, the Accelerate state switches to FSDP
right after it is built, with the plugin Accelerate itself made from the launcher's environment. Nothing
else changes: model preparation, state dicts and checkpoints go through Accelerate's own FSDP code.
hfssl never imports this; only tests put it on the path.
"""

import os

if os.environ.get("HFSSL_TEST_FSDP_ON_CPU") == "1":
    import accelerate.state as _state
    from accelerate.utils import DistributedType as _DistributedType

    _original_init = _state.AcceleratorState.__init__

    def _init(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None, fsdp_plugin=None,
              *args, **kwargs):
        _original_init(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, *args, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == _DistributedType.MULTI_CPU:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = _DistributedType.FSDP
            _state.PartialState._shared_state["distributed_type"] = _DistributedType.FSDP

    _state.AcceleratorState.__init__ = _init

    # FSDP1 compares Accelerate's device_id (cpu, turned into cpu:0) with its compute device (cpu) and refuses;
    # without a device_id it computes on the parameters' device, which is what a CPU run wants.
    import torch.distributed.fsdp._init_utils as _fsdp_init

    _original_device = _fsdp_init._get_device_from_device_id

    def _device_from_device_id(device_id, rank, device_handle):
        device = _original_device(device_id, rank, device_handle)
        return None if device is not None and device.type == "cpu" else device

    _fsdp_init._get_device_from_device_id = _device_from_device_id

# Test-only, likewise: Accelerate's real DeepSpeed path on CPU processes. DeepSpeed runs on CPUs with its
# "cpu" accelerator; its shared-memory all-reduce is a C++ op compiled on first use (~90 s here), which
# gloo makes unnecessary, so it is skipped.
if os.environ.get("HFSSL_TEST_DEEPSPEED_ON_CPU") == "1":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import importlib

    import accelerate.state as _ds_state
    from accelerate.utils import DistributedType as _DsType

    # importlib, not `import deepspeed.comm.torch as m`: deepspeed.comm has an attribute `torch` (PyTorch).
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    _ds_original_init = _ds_state.AcceleratorState.__init__

    def _ds_init(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None, fsdp_plugin=None,
                 *args, **kwargs):
        _ds_original_init(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, *args, **kwargs)
        if deepspeed_plugin is not None and self.distributed_type == _DsType.MULTI_CPU:
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self._mixed_precision = "no"
            self.distributed_type = _DsType.DEEPSPEED
            _ds_state.PartialState._shared_state["distributed_type"] = _DsType.DEEPSPEED

    _ds_state.AcceleratorState.__init__ = _ds_init

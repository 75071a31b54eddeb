"""Type stubs for gradzip._C, the compiled extension.

Importing the module registers, as a side effect, the ops ``torch.ops.gradzip.*`` and the custom classes
``torch.classes.gradzip.{Codec, Unit, Plan, Federation}``; their Python-facing wrappers live in gradzip._core, gradzip.ddp and
gradzip.collective. Signatures (schema strings):

    compressors() -> str[]
    describe_compressors() -> str
    validate(str compressor, str feedback, int numel) -> (str, str)
    encode(Tensor x, str spec, int seed=0, int step=0, int rank=0, int stream=0) -> Tensor      # CPU kernel
    decode(Tensor payload, str spec, int numel, int seed=0, int step=0, int rank=0, int stream=0) -> Tensor

    Codec(str spec): spec() name() max_encoded_bytes(int) traits(int) check(int)
                     encode(Tensor, seed, step, rank, stream) decode(Tensor, numel, seed, step, rank, stream)
    Unit(str compressor, str feedback, int numel, int rank, int world, int seed, int stream, float gamma):
                     numel() stream() steps() compressor_spec() feedback_spec() variable_size()
                     memories() -> list[Tensor]  state() -> list[Tensor]  load_state(list[Tensor])
    Plan(int numel, int world): add(Unit, list[int]) num_units() numel() linear_step() variable_size()
                     slot_bytes() used_bytes() last_metrics() encode(Tensor, bool) encode_linear(Tensor, bool)
                     decode(Tensor, int, Tensor) decode_linear(Tensor, Tensor)
    Federation(str algorithm, str uplink, str downlink, str feedback, int num_clients, int clients_per_round,
               int local_steps, float lr_local, float lr_global, float alpha, float beta, int seed, Tensor x0,
               int rank, int world):     (gradzip.fedsim; torch_ext/csrc/fed_ops.cc)
                     numel() slot_bytes() round() uplink_spec() downlink_spec() feedback_spec() owns(int)
                     sample(int) model() client_model() control() totals() corrections(list[int])
                     local_step(Tensor Y, Tensor G, Tensor corr, float lr) finish(list[int], Tensor Y)
                     aggregate(list[int], Tensor payloads, Tensor sizes) state() load_state(Tensor)
"""

torch_version: str
"""The torch version the extension was compiled against (it must match the torch that loads it)."""

cuda_kernels: int
"""1 when CUDA kernels were compiled into the ops (none yet: CUDA tensors go through the CPU ops)."""

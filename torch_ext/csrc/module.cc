// The Python extension module `gradzip._C`. Importing it runs the static TORCH_LIBRARY registration below, which
// makes the ops available as torch.ops.gradzip.* and the classes as torch.classes.gradzip.* (Codec, Unit, Plan).
// The module itself only carries build information (see _C.pyi).
//
// Op declarations live in one TORCH_LIBRARY block; CPU kernels in TORCH_LIBRARY_IMPL(gradzip, CPU). A CUDA
// implementation would be registered under TORCH_LIBRARY_IMPL(gradzip, CUDA) in a file compiled only when
// GRADZIP_ENABLE_CUDA is on; there is none yet (the Python layer moves CUDA buckets through these CPU ops).
#include <Python.h>

#include "common.h"

#ifndef GRADZIP_TORCH_CUDA_OPS
#define GRADZIP_TORCH_CUDA_OPS 0  // 1 when csrc/cuda_ops.cc (the CUDA kernels of the ops) is compiled in
#endif
#ifndef GRADZIP_TORCH_VERSION
#define GRADZIP_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(gradzip, m) {
  gradzip::torch_ext::register_codec_ops(m);
  gradzip::torch_ext::register_ddp_units(m);
  gradzip::torch_ext::register_fed_ops(m);
}

TORCH_LIBRARY_IMPL(gradzip, CPU, m) {
  m.impl("encode", &gradzip::torch_ext::encode_cpu);
  m.impl("decode", &gradzip::torch_ext::decode_cpu);
}

namespace {

PyModuleDef gradzip_c_module = {
    PyModuleDef_HEAD_INIT,
    "gradzip._C",
    "gradzip's compiled core: importing it registers torch.ops.gradzip and torch.classes.gradzip.",
    -1,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C() {
  PyObject* m = PyModule_Create(&gradzip_c_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddStringConstant(m, "torch_version", GRADZIP_TORCH_VERSION) < 0 ||
      PyModule_AddIntConstant(m, "cuda_kernels", GRADZIP_TORCH_CUDA_OPS) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}

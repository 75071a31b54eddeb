# LibTorch for gradzip::torch (the C++ helper of torch_ext/include/gradzip/torch.h), the LibTorch training example
# and its tests. Included from the top-level CMakeLists.txt, so that torch's imported targets are visible in every
# directory.
#
# Torch is looked up only when asked for, so that build trees without torch never pay for it:
#   -DGRADZIP_PYTHON=<python>          an interpreter whose `import torch` provides LibTorch (via
#                                      torch.utils.cmake_prefix_path); it also runs the Python side of the fixture test
#   -DGRADZIP_TORCH_PREFIX=<dir>       torch's CMake prefix directly (an unpacked LibTorch zip, or
#                                      site-packages/torch/share/cmake)
# GRADZIP_BUILD_LIBTORCH then defaults to ON. Sets GRADZIP_LIBTORCH_FOUND. (A Torch_DIR alone does not count: the
# Python extension's build caches one, and it must not turn the LibTorch targets on.)
set(GRADZIP_PYTHON "" CACHE FILEPATH "Python whose torch package provides LibTorch for gradzip::torch (optional)")
set(GRADZIP_TORCH_PREFIX "" CACHE PATH "torch's CMake prefix for gradzip::torch (optional)")

set(GRADZIP_LIBTORCH_FOUND OFF)
set(_gz_torch_prefix "${GRADZIP_TORCH_PREFIX}")
if(NOT _gz_torch_prefix AND GRADZIP_PYTHON)
  execute_process(
    COMMAND "${GRADZIP_PYTHON}" -c "import torch, sys; sys.stdout.write(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _gz_torch_prefix
    RESULT_VARIABLE _gz_torch_rc
    ERROR_VARIABLE _gz_torch_err)
  if(NOT _gz_torch_rc EQUAL 0)
    message(WARNING "gradzip: GRADZIP_PYTHON=${GRADZIP_PYTHON} cannot import torch, so gradzip::torch and the LibTorch "
                    "example are not built:\n${_gz_torch_err}")
    set(_gz_torch_prefix "")
  endif()
endif()

if(_gz_torch_prefix)
  list(APPEND CMAKE_PREFIX_PATH "${_gz_torch_prefix}")
  find_package(Torch QUIET)
  find_package(ZLIB QUIET)
  if(NOT Torch_FOUND)
    message(WARNING "gradzip: LibTorch was asked for (prefix '${_gz_torch_prefix}') but find_package(Torch) failed; "
                    "gradzip::torch is not built")
  elseif(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=0")
    # Our static libraries must agree with torch on the libstdc++ string ABI (see torch_ext/CMakeLists.txt).
    message(WARNING "gradzip: this LibTorch uses the pre-cxx11 ABI (-D_GLIBCXX_USE_CXX11_ABI=0); gradzip::torch "
                    "needs the cxx11 ABI (torch >= 2.7 wheels from PyPI), so it is not built")
  elseif(NOT ZLIB_FOUND)
    message(WARNING "gradzip: zlib (zlib1g-dev) not found; gradzip::torch (its Fashion-MNIST reader) is not built")
  else()
    set(GRADZIP_LIBTORCH_FOUND ON)
    message(STATUS "gradzip: LibTorch ${Torch_VERSION} found (${Torch_DIR})")
  endif()
endif()
